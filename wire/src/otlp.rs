//! OTLP/HTTP logs (`POST /v1/logs`): the `ExportLogsServiceRequest` schema, after
//! `opentelemetry/proto/collector/logs/v1` and `logs/v1`, `common/v1`, `resource/v1`, in its
//! protobuf and JSON encodings, decoded to [`Stream`]s, and the response.
//!
//! A stream is a resource's attributes plus the record's own `log.file.path` /
//! `log.file.name` attributes (the collector's filelog receiver puts the file there, not on
//! the resource). Other record attributes, severity and trace ids are not stored. A string
//! body is the line (read as bytes, so a line that is not UTF-8 stays as sent); any other
//! body is stored as its JSON.

use base64::Engine as _;
use bytes::Bytes;
use prost::Message;
use serde::Deserialize;

use crate::push::{check_labels, count_messages, json_structures, Entry, Stream};
use crate::{DecodeError, Limits};

/// Record attributes that name the stream's file, kept as stream labels.
pub const FILE_ATTRIBUTES: [&str; 2] = ["log.file.path", "log.file.name"];

#[derive(Clone, PartialEq, Message)]
pub struct ExportLogsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_logs: Vec<ResourceLogs>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResourceLogs {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_logs: Vec<ScopeLogs>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ScopeLogs {
    #[prost(message, repeated, tag = "2")]
    pub log_records: Vec<LogRecord>,
}

#[derive(Clone, PartialEq, Message)]
pub struct LogRecord {
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    #[prost(fixed64, tag = "11")]
    pub observed_time_unix_nano: u64,
    #[prost(message, optional, tag = "5")]
    pub body: Option<AnyValue>,
    #[prost(message, repeated, tag = "6")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub value: Option<Value>,
}

/// `AnyValue.value`. A string is read as bytes (see the module doc).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(bytes = "bytes", tag = "1")]
    String(Bytes),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
    #[prost(message, tag = "5")]
    Array(ArrayValue),
    #[prost(message, tag = "6")]
    KvList(KeyValueList),
    #[prost(bytes = "bytes", tag = "7")]
    Bytes(Bytes),
}

#[derive(Clone, PartialEq, Message)]
pub struct ArrayValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValueList {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<KeyValue>,
}

/// `ExportLogsServiceResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportLogsServiceResponse {
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<ExportLogsPartialSuccess>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ExportLogsPartialSuccess {
    #[prost(int64, tag = "1")]
    pub rejected_log_records: i64,
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// The answer in the request's encoding: `rejected` records refused, and why.
pub fn response(rejected: u64, why: &str, json: bool) -> Vec<u8> {
    if json {
        if rejected == 0 {
            return b"{}".to_vec();
        }
        return serde_json::json!({"partialSuccess": {
            "rejectedLogRecords": rejected.to_string(),
            "errorMessage": why,
        }})
        .to_string()
        .into_bytes();
    }
    ExportLogsServiceResponse {
        partial_success: (rejected > 0).then(|| ExportLogsPartialSuccess {
            rejected_log_records: i64::try_from(rejected).unwrap_or(i64::MAX),
            error_message: why.to_string(),
        }),
    }
    .encode_to_vec()
}

// Message kinds of a request, for `count_messages`.
const REQUEST: u8 = 0;
const RESOURCE_LOGS: u8 = 1;
const RESOURCE: u8 = 2;
const SCOPE_LOGS: u8 = 3;
const SCOPE: u8 = 4;
const RECORD: u8 = 5;
const KEY_VALUE: u8 = 6;
const ANY: u8 = 7;
const ARRAY: u8 = 8;
const KV_LIST: u8 = 9;

fn schema(kind: u8, field: u32) -> Option<u8> {
    match (kind, field) {
        (REQUEST, 1) => Some(RESOURCE_LOGS),
        (RESOURCE_LOGS, 1) => Some(RESOURCE),
        (RESOURCE_LOGS, 2) => Some(SCOPE_LOGS),
        (RESOURCE, 1) => Some(KEY_VALUE),
        (SCOPE_LOGS, 1) => Some(SCOPE),
        (SCOPE_LOGS, 2) => Some(RECORD),
        (SCOPE, 3) => Some(KEY_VALUE),
        (RECORD, 5) => Some(ANY),
        (RECORD, 6) => Some(KEY_VALUE),
        (KEY_VALUE, 2) => Some(ANY),
        (ANY, 5) => Some(ARRAY),
        (ANY, 6) => Some(KV_LIST),
        (ARRAY, 1) => Some(ANY),
        (KV_LIST, 1) => Some(KEY_VALUE),
        _ => None,
    }
}

/// Bytes of memory one decoded message may take, at most (a `LogRecord` is the largest).
pub const MESSAGE_BYTES: usize = 160;

/// Counts a protobuf body's messages within `limits` without decoding it (records against
/// `max_lines`, resources against `max_files`); returns how many there are in all.
pub fn check_protobuf(body: &[u8], limits: &Limits) -> Result<usize, DecodeError> {
    let max_total = limits.max_lines.saturating_mul(8);
    let counts = count_messages(body, schema, 10, max_total)?;
    if counts[RESOURCE_LOGS as usize] > limits.max_files {
        return Err(DecodeError::TooLarge(format!(
            "{} resources in one request, more than {}; send smaller batches",
            counts[RESOURCE_LOGS as usize], limits.max_files
        )));
    }
    if counts[RECORD as usize] > limits.max_lines {
        return Err(limits.too_many_lines());
    }
    Ok(counts.iter().sum())
}

/// Decodes a protobuf request (within `limits`, counted before decoding).
pub fn decode_protobuf(body: Bytes, limits: &Limits) -> Result<Vec<Stream>, DecodeError> {
    check_protobuf(&body, limits)?;
    let req = ExportLogsServiceRequest::decode(body).map_err(|e| {
        DecodeError::invalid("protobuf", format!("not an ExportLogsServiceRequest: {e}"))
    })?;
    streams(req)
}

/// What decoding a JSON body may allocate, at most, in bytes.
pub fn json_memory(body: &[u8]) -> u64 {
    // Each structure is decoded twice (JSON form, then the schema's), at most ~200 bytes.
    json_structures(body) as u64 * 400
}

/// Decodes a JSON request within `limits`.
pub fn decode_json(body: &[u8], limits: &Limits) -> Result<Vec<Stream>, DecodeError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let req: json::Request = serde_path_to_error::deserialize(de)
        .map_err(|e| DecodeError::Json(format!("{} (at {})", e.inner(), e.path())))?;
    let records: usize = req
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum();
    if req.resource_logs.len() > limits.max_files {
        return Err(DecodeError::TooLarge(format!(
            "{} resources in one request, more than {}; send smaller batches",
            req.resource_logs.len(),
            limits.max_files
        )));
    }
    if records > limits.max_lines {
        return Err(limits.too_many_lines());
    }
    streams(req.into_schema()?)
}

/// Groups a request's records into streams: by resource, then by the record's file
/// attributes, in the order they first appear.
fn streams(req: ExportLogsServiceRequest) -> Result<Vec<Stream>, DecodeError> {
    let mut out: Vec<Stream> = Vec::new();
    for rl in req.resource_logs {
        let mut base: Vec<(String, String)> = rl
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default()
            .into_iter()
            .map(|kv| (kv.key, label_value(kv.value.as_ref())))
            .collect();
        // Resource attributes beyond the label limits are not an error: OTLP SDKs add many.
        base.retain(|(k, _)| !k.is_empty());
        base.sort();
        base.dedup_by(|a, b| a.0 == b.0);
        let first_of_resource = out.len();
        for record in rl.scope_logs.into_iter().flat_map(|s| s.log_records) {
            let mut labels = base.clone();
            for kv in &record.attributes {
                if FILE_ATTRIBUTES.contains(&kv.key.as_str())
                    && !base.iter().any(|(k, _)| *k == kv.key)
                {
                    labels.push((kv.key.clone(), label_value(kv.value.as_ref())));
                }
            }
            labels.sort();
            labels.dedup_by(|a, b| a.0 == b.0);
            let ts_ns = if record.time_unix_nano != 0 {
                record.time_unix_nano
            } else {
                record.observed_time_unix_nano
            };
            let line = match record.body.and_then(|b| b.value) {
                Some(Value::String(s)) => s,
                None => Bytes::new(),
                Some(other) => Bytes::from(to_json(&other).to_string()),
            };
            let entry = Entry { ts_ns, line };
            match out[first_of_resource..]
                .iter_mut()
                .find(|s| s.labels == labels)
            {
                Some(s) => s.entries.push(entry),
                None => out.push(Stream {
                    labels,
                    entries: vec![entry],
                }),
            }
        }
    }
    for s in &mut out {
        trim_labels(&mut s.labels);
        check_labels(&mut s.labels)?;
    }
    Ok(out)
}

/// Drops what a label cannot hold from resource attributes (values over the label limit are
/// cut, extra attributes past the count limit dropped): an SDK's resource is not the
/// client's error the way a Loki label set is.
fn trim_labels(labels: &mut Vec<(String, String)>) {
    labels.truncate(crate::push::MAX_LABELS);
    for (name, value) in labels.iter_mut() {
        truncate_utf8(name, crate::push::MAX_LABEL_NAME_BYTES);
        truncate_utf8(value, crate::push::MAX_LABEL_VALUE_BYTES);
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// An attribute as a label value: a string as itself, anything else as its JSON.
fn label_value(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::String(s)) => String::from_utf8_lossy(s).into_owned(),
        Some(other) => to_json(other).to_string(),
    }
}

/// A value as JSON, as OTLP's JSON encoding would show it without the type wrappers.
fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    let any = |a: &AnyValue| a.value.as_ref().map_or(J::Null, to_json);
    match v {
        Value::String(s) => J::String(String::from_utf8_lossy(s).into_owned()),
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Double(d) => serde_json::Number::from_f64(*d).map_or(J::Null, J::Number),
        Value::Array(a) => J::Array(a.values.iter().map(any).collect()),
        Value::KvList(l) => J::Object(
            l.values
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(J::Null, any)))
                .collect(),
        ),
        Value::Bytes(b) => J::String(base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

/// OTLP's JSON encoding (camelCase names, 64-bit integers as strings or numbers, bytes as
/// base64), read into the protobuf schema's types.
mod json {
    use super::*;
    use serde::de::{self, Deserializer};

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Request {
        #[serde(default)]
        pub(super) resource_logs: Vec<ResourceLogs>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct ResourceLogs {
        #[serde(default)]
        resource: Option<Resource>,
        #[serde(default)]
        pub(super) scope_logs: Vec<ScopeLogs>,
    }

    #[derive(Deserialize)]
    pub(super) struct Resource {
        #[serde(default)]
        attributes: Vec<KeyValue>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct ScopeLogs {
        #[serde(default)]
        pub(super) log_records: Vec<LogRecord>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct LogRecord {
        #[serde(default, deserialize_with = "u64_any")]
        time_unix_nano: u64,
        #[serde(default, deserialize_with = "u64_any")]
        observed_time_unix_nano: u64,
        #[serde(default)]
        body: Option<Any>,
        #[serde(default)]
        attributes: Vec<KeyValue>,
    }

    #[derive(Deserialize)]
    pub(super) struct KeyValue {
        key: String,
        #[serde(default)]
        value: Option<Any>,
    }

    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Any {
        string_value: Option<String>,
        bool_value: Option<bool>,
        #[serde(default, deserialize_with = "i64_opt")]
        int_value: Option<i64>,
        double_value: Option<f64>,
        array_value: Option<Values<Any>>,
        kvlist_value: Option<Values<KeyValue>>,
        bytes_value: Option<String>,
    }

    #[derive(Deserialize)]
    pub(super) struct Values<T> {
        #[serde(default = "Vec::new")]
        values: Vec<T>,
    }

    /// A 64-bit integer as OTLP's JSON sends it: a decimal string, or a number.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Unsigned(u64),
        Signed(i64),
    }

    fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i128, D::Error> {
        match Int::deserialize(d)? {
            Int::Unsigned(n) => Ok(i128::from(n)),
            Int::Signed(n) => Ok(i128::from(n)),
            Int::Text(s) => s
                .parse()
                .map_err(|_| de::Error::custom(format!("{s:?} is not an integer"))),
        }
    }

    fn u64_any<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let n = int(d)?;
        u64::try_from(n)
            .map_err(|_| de::Error::custom(format!("{n} is not an unsigned 64-bit time")))
    }

    fn i64_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let n = int(d)?;
        i64::try_from(n)
            .map(Some)
            .map_err(|_| de::Error::custom(format!("{n} is not a 64-bit integer")))
    }

    impl Request {
        pub(super) fn into_schema(self) -> Result<ExportLogsServiceRequest, DecodeError> {
            Ok(ExportLogsServiceRequest {
                resource_logs: self
                    .resource_logs
                    .into_iter()
                    .map(|r| {
                        Ok(super::ResourceLogs {
                            resource: r
                                .resource
                                .map(|res| {
                                    Ok::<_, DecodeError>(super::Resource {
                                        attributes: key_values(res.attributes)?,
                                    })
                                })
                                .transpose()?,
                            scope_logs: r
                                .scope_logs
                                .into_iter()
                                .map(|s| {
                                    Ok(super::ScopeLogs {
                                        log_records: s
                                            .log_records
                                            .into_iter()
                                            .map(record)
                                            .collect::<Result<_, _>>()?,
                                    })
                                })
                                .collect::<Result<_, DecodeError>>()?,
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?,
            })
        }
    }

    fn record(r: LogRecord) -> Result<super::LogRecord, DecodeError> {
        Ok(super::LogRecord {
            time_unix_nano: r.time_unix_nano,
            observed_time_unix_nano: r.observed_time_unix_nano,
            body: r.body.map(any).transpose()?,
            attributes: key_values(r.attributes)?,
        })
    }

    fn key_values(kvs: Vec<KeyValue>) -> Result<Vec<super::KeyValue>, DecodeError> {
        kvs.into_iter()
            .map(|kv| {
                Ok(super::KeyValue {
                    key: kv.key,
                    value: kv.value.map(any).transpose()?,
                })
            })
            .collect()
    }

    fn any(a: Any) -> Result<AnyValue, DecodeError> {
        let value = if let Some(s) = a.string_value {
            Some(Value::String(Bytes::from(s)))
        } else if let Some(b) = a.bool_value {
            Some(Value::Bool(b))
        } else if let Some(i) = a.int_value {
            Some(Value::Int(i))
        } else if let Some(d) = a.double_value {
            Some(Value::Double(d))
        } else if let Some(arr) = a.array_value {
            Some(Value::Array(ArrayValue {
                values: arr.values.into_iter().map(any).collect::<Result<_, _>>()?,
            }))
        } else if let Some(kvs) = a.kvlist_value {
            Some(Value::KvList(KeyValueList {
                values: key_values(kvs.values)?,
            }))
        } else if let Some(b) = a.bytes_value {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|e| DecodeError::invalid("bytesValue", format!("not base64: {e}")))?;
            Some(Value::Bytes(Bytes::from(bytes)))
        } else {
            None
        };
        Ok(AnyValue { value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Value::String(Bytes::from(value.to_string()))),
            }),
        }
    }

    #[test]
    fn records_group_into_streams_by_resource_and_file() {
        let record = |file: &str, body: Value, t: u64| LogRecord {
            time_unix_nano: t,
            observed_time_unix_nano: 7,
            body: Some(AnyValue { value: Some(body) }),
            attributes: vec![kv("log.file.name", file), kv("http.method", "GET")],
        };
        let req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![kv("host.name", "web-1"), kv("service.name", "api")],
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        record("a.log", Value::String(Bytes::from_static(b"one")), 5),
                        record("b.log", Value::Int(42), 0),
                        record("a.log", Value::Bool(true), 6),
                    ],
                }],
            }],
        };
        let s = decode_protobuf(Bytes::from(req.encode_to_vec()), &Limits::NONE).expect("decode");
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0].labels,
            [
                ("host.name".into(), "web-1".into()),
                ("log.file.name".into(), "a.log".into()),
                ("service.name".into(), "api".into())
            ]
        );
        let lines: Vec<(&[u8], u64)> = s[0]
            .entries
            .iter()
            .map(|e| (&e.line[..], e.ts_ns))
            .collect();
        assert_eq!(lines, [(&b"one"[..], 5), (&b"true"[..], 6)]);
        assert_eq!(&s[1].entries[0].line[..], b"42");
        assert_eq!(
            s[1].entries[0].ts_ns, 7,
            "observed time when the record has none"
        );
    }

    #[test]
    fn json_encoding_decodes_like_protobuf() {
        let body = br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"host.name","value":{"stringValue":"h"}}]},
            "scopeLogs":[{"scope":{"name":"x"},"logRecords":[
              {"timeUnixNano":"1700000000000000000","body":{"stringValue":"hello"},"traceId":"abc"},
              {"timeUnixNano":1700000000000000001,"body":{"kvlistValue":{"values":[{"key":"a","value":{"intValue":"3"}}]}}}]}]}]}"#;
        let s = decode_json(body, &Limits::NONE).expect("decode");
        assert_eq!(s[0].entries[0].ts_ns, 1_700_000_000_000_000_000);
        assert_eq!(&s[0].entries[0].line[..], b"hello");
        assert_eq!(&s[0].entries[1].line[..], br#"{"a":3}"#);
        let e = decode_json(
            br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"soon"}]}]}]}"#,
            &Limits::NONE,
        )
        .expect_err("bad time");
        assert!(e.to_string().contains("timeUnixNano"), "{e}");
    }

    #[test]
    fn responses_say_what_was_rejected() {
        assert_eq!(response(0, "", true), b"{}");
        let r = ExportLogsServiceResponse::decode(&response(2, "too long", false)[..]).expect("pb");
        assert_eq!(r.partial_success.map(|p| p.rejected_log_records), Some(2));
        assert!(response(0, "", false).is_empty());
    }
}
