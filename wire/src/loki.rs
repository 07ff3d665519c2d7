//! Loki's push API (`POST /loki/api/v1/push`): its `PushRequest` schema, after Loki's
//! `push.proto`, and its JSON form, both decoded to [`Stream`]s.
//!
//! - protobuf (what Promtail, Alloy and Fluent Bit send, snappy-compressed by the caller's
//!   transport; the aggregator unsnaps before this): `PushRequest { repeated StreamAdapter
//!   streams = 1 }`, `StreamAdapter { string labels = 1; repeated EntryAdapter entries = 2;
//!   uint64 hash = 3 }`, `EntryAdapter { Timestamp timestamp = 1; string line = 2; repeated
//!   LabelPairAdapter structuredMetadata = 3 }`.
//! - JSON: `{"streams":[{"stream":{"job":"x"},"values":[["<ns>","line"],["<ns>","line",{…}]]}]}`.
//!
//! A line is read as bytes (`string` and `bytes` share the wire type), so a line that is not
//! UTF-8 is kept as sent rather than failing the batch. Structured metadata is accepted and
//! not stored.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use prost::Message;
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

use crate::push::{check_labels, count_messages, json_structures, parse_labels, Entry, Stream};
use crate::{DecodeError, Limits};

/// `PushRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}

/// `StreamAdapter`: a label set in Prometheus text form and its entries.
#[derive(Clone, PartialEq, Message)]
pub struct StreamAdapter {
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

/// `EntryAdapter`.
#[derive(Clone, PartialEq, Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    /// A `string` in Loki's schema, read as bytes (see the module doc).
    #[prost(bytes = "bytes", tag = "2")]
    pub line: Bytes,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
}

/// `LabelPairAdapter`: one pair of structured metadata.
#[derive(Clone, PartialEq, Message)]
pub struct LabelPairAdapter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    /// Nanoseconds since the epoch; 0 for a time before it.
    pub fn nanos_since_epoch(&self) -> u64 {
        let ns = i128::from(self.seconds) * 1_000_000_000 + i128::from(self.nanos);
        u64::try_from(ns).unwrap_or(0)
    }
}

/// The message kinds of a `PushRequest`, for [`count_messages`].
const REQUEST: u8 = 0;
const STREAM: u8 = 1;
const ENTRY: u8 = 2;
const OTHER: u8 = 3;

fn schema(kind: u8, field: u32) -> Option<u8> {
    match (kind, field) {
        (REQUEST, 1) => Some(STREAM),
        (STREAM, 2) => Some(ENTRY),
        (ENTRY, 1 | 3) => Some(OTHER),
        _ => None,
    }
}

/// Bytes of memory one decoded message may take, at most (an `EntryAdapter` is the largest).
pub const MESSAGE_BYTES: usize = 96;

/// Counts a protobuf body's messages within `limits` (streams against `max_files`, entries
/// against `max_lines`) without decoding it; returns how many there are in all.
pub fn check_protobuf(body: &[u8], limits: &Limits) -> Result<usize, DecodeError> {
    let max_total = limits
        .max_lines
        .saturating_mul(3)
        .saturating_add(limits.max_files.saturating_mul(2));
    let counts = count_messages(body, schema, 4, max_total)?;
    check_counts(counts[STREAM as usize], counts[ENTRY as usize], limits)?;
    Ok(counts.iter().sum())
}

fn check_counts(streams: usize, entries: usize, limits: &Limits) -> Result<(), DecodeError> {
    if streams > limits.max_files {
        return Err(DecodeError::TooLarge(format!(
            "{streams} streams in one request, more than {}; send smaller batches",
            limits.max_files
        )));
    }
    if entries > limits.max_lines {
        return Err(limits.too_many_lines());
    }
    Ok(())
}

/// Decodes a protobuf `PushRequest` (already unsnapped; call [`check_protobuf`] first).
pub fn decode_protobuf(body: Bytes, limits: &Limits) -> Result<Vec<Stream>, DecodeError> {
    check_protobuf(&body, limits)?;
    let req = PushRequest::decode(body)
        .map_err(|e| DecodeError::invalid("protobuf", format!("not a Loki PushRequest: {e}")))?;
    req.streams
        .into_iter()
        .map(|s| {
            let mut labels = parse_labels(&s.labels)?;
            check_labels(&mut labels)?;
            let entries = s
                .entries
                .into_iter()
                .map(|e| Entry {
                    ts_ns: e.timestamp.map_or(0, |t| t.nanos_since_epoch()),
                    line: e.line,
                })
                .collect();
            Ok(Stream { labels, entries })
        })
        .collect()
}

/// The JSON form's body.
#[derive(Deserialize)]
struct JsonPush<'a> {
    #[serde(borrow)]
    streams: Vec<JsonStream<'a>>,
}

#[derive(Deserialize)]
struct JsonStream<'a> {
    #[serde(borrow, default)]
    stream: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(borrow, default)]
    values: Vec<JsonValue<'a>>,
}

/// `["<ns>", "line"]` or `["<ns>", "line", {structured metadata}]`.
struct JsonValue<'a> {
    ts_ns: u64,
    line: Cow<'a, str>,
}

impl<'de: 'a, 'a> Deserialize<'de> for JsonValue<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = JsonValue<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"["<unix epoch in nanoseconds>", "<log line>"]"#)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let ts: Cow<'de, str> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let ts_ns = ts.parse::<u64>().map_err(|_| {
                    de::Error::custom(format!(
                        "timestamp {:?} is not nanoseconds since the epoch as a string",
                        ts.chars().take(40).collect::<String>()
                    ))
                })?;
                let line: Cow<'de, str> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(JsonValue { ts_ns, line })
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// What decoding a JSON body of `len` bytes may allocate, at most, in bytes: the structures
/// it holds times the largest of them.
pub fn json_memory(body: &[u8]) -> u64 {
    json_structures(body) as u64 * 64
}

/// Decodes the JSON form within `limits`.
pub fn decode_json(body: &[u8], limits: &Limits) -> Result<Vec<Stream>, DecodeError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let push: JsonPush<'_> = serde_path_to_error::deserialize(de)
        .map_err(|e| DecodeError::Json(format!("{} (at {})", e.inner(), e.path())))?;
    let entries = push.streams.iter().map(|s| s.values.len()).sum();
    check_counts(push.streams.len(), entries, limits)?;
    push.streams
        .into_iter()
        .map(|s| {
            let mut labels: Vec<(String, String)> = s
                .stream
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            check_labels(&mut labels)?;
            let entries = s
                .values
                .into_iter()
                .map(|v| Entry {
                    ts_ns: v.ts_ns,
                    line: Bytes::from(v.line.into_owned()),
                })
                .collect();
            Ok(Stream { labels, entries })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_round_trips_through_the_schema() {
        let req = PushRequest {
            streams: vec![StreamAdapter {
                labels: r#"{job="nginx", host="web-1"}"#.into(),
                entries: vec![EntryAdapter {
                    timestamp: Some(Timestamp {
                        seconds: 1_700_000_000,
                        nanos: 5,
                    }),
                    line: Bytes::from_static(b"GET / 200 \xff"),
                    structured_metadata: vec![],
                }],
                hash: 0,
            }],
        };
        let streams =
            decode_protobuf(Bytes::from(req.encode_to_vec()), &Limits::NONE).expect("decode");
        assert_eq!(
            streams[0].labels,
            [
                ("host".into(), "web-1".into()),
                ("job".into(), "nginx".into())
            ]
        );
        assert_eq!(streams[0].entries[0].ts_ns, 1_700_000_000_000_000_005);
        assert_eq!(&streams[0].entries[0].line[..], b"GET / 200 \xff");
    }

    #[test]
    fn json_reads_values_with_and_without_metadata() {
        let body = br#"{"streams":[{"stream":{"host":"h","filename":"/f"},"values":[["1700000000000000001","a \"b\""],["2","c",{"trace_id":"x"}]]}]}"#;
        let streams = decode_json(body, &Limits::NONE).expect("decode");
        assert_eq!(streams[0].entries.len(), 2);
        assert_eq!(&streams[0].entries[0].line[..], b"a \"b\"");
        assert_eq!(streams[0].entries[1].ts_ns, 2);
        let e = decode_json(
            br#"{"streams":[{"stream":{},"values":[[1,"x"]]}]}"#,
            &Limits::NONE,
        )
        .expect_err("number timestamp");
        assert!(e.to_string().contains("values[0]"), "{e}");
    }

    #[test]
    fn counts_are_limited_before_decoding() {
        let limits = Limits {
            max_lines: 2,
            max_line_bytes: 100,
            max_files: 1,
            max_hosts: 1,
        };
        let entry = || EntryAdapter {
            timestamp: None,
            line: Bytes::from_static(b"x"),
            structured_metadata: vec![],
        };
        let req = PushRequest {
            streams: vec![StreamAdapter {
                labels: "{}".into(),
                entries: vec![entry(), entry(), entry()],
                hash: 0,
            }],
        };
        let e = check_protobuf(&req.encode_to_vec(), &limits).expect_err("3 entries");
        assert!(matches!(e, DecodeError::TooLarge(_)), "{e}");
        let streams = PushRequest {
            streams: vec![req.streams[0].clone(), req.streams[0].clone()],
        };
        let e = check_protobuf(&streams.encode_to_vec(), &limits).expect_err("2 streams");
        assert!(e.to_string().contains("streams"), "{e}");
    }
}
