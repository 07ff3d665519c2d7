//! What an HTTP sink sends, and what acknowledges it: our compact form to an aggregator
//! (`/store/batch`), Loki's push API (protobuf + snappy), or OTLP/HTTP logs (protobuf).
//! The batch arrives as a compact body whatever the protocol; Loki and OTLP get it
//! translated, each line with a time.
//!
//! Times: a line's time is when the agent read it (ms, carried in the batch), made strictly
//! increasing through the batch in ns, so lines keep their order and a retry of the batch
//! carries the very same times (a receiver that drops an entry identical in stream, time
//! and line — Loki, our own aggregator — stores a resent batch once). A batch read again after an agent restart gets
//! new times. A partial last line is not sent to these sinks (they have no partial lines):
//! it goes once complete, in a later batch, as the checkpoint already waits for it.
//!
//! Events: lines the batch marks as continuing the event before them (the source's
//! `multiline` rule: a stack trace's frames) join that event's entry after a `\n`.

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderValue};
use logship_wire::{loki, otlp};
use prost::Message;

use crate::config::SinkSettings;

/// How a sink speaks.
#[derive(Debug)]
pub enum Protocol {
    /// Our compact form, acknowledged by `{"stored": N}` naming every line.
    Aggregator,
    /// Loki's push API; `labels` beside `host` and `filename`.
    Loki {
        labels: Vec<(String, String)>,
        tenant: Option<HeaderValue>,
        /// Loki's JSON form, gzip-compressed when `gzip`; protobuf + snappy when `None`.
        json: Option<JsonForm>,
    },
    /// OTLP/HTTP logs; `attributes` beside `host.name`, `log.file.path`, `log.file.name`.
    Otlp { attributes: Vec<(String, String)> },
}

/// How the Loki JSON form is sent.
#[derive(Debug, Clone, Copy)]
pub struct JsonForm {
    pub gzip: bool,
}

/// A translated request body and its content type.
pub struct Translated {
    pub payload: Vec<u8>,
    pub content_type: &'static str,
    /// Whether the sink's own compression applies (Loki's body is snappy already).
    pub compressible: bool,
    /// The `Content-Encoding` the payload already has (Loki's JSON form: gzip).
    pub encoding: Option<&'static str>,
}

impl Protocol {
    pub fn from_settings(s: &SinkSettings) -> anyhow::Result<Self> {
        Ok(match s.kind.as_str() {
            "loki" => Protocol::Loki {
                labels: s.labels.clone(),
                tenant: s
                    .tenant
                    .as_deref()
                    .map(HeaderValue::from_str)
                    .transpose()
                    .map_err(|_| anyhow::anyhow!("sink.tenant: not a valid header value"))?,
                json: s.loki_json.then_some(JsonForm {
                    gzip: s.compression != crate::config::Compression::None,
                }),
            },
            "otlp" => Protocol::Otlp {
                attributes: s.labels.clone(),
            },
            _ => Protocol::Aggregator,
        })
    }

    /// The request body for a compact `body` whose first line was read at `read_at_ms`;
    /// `None` for the aggregator, which takes the compact body as it is.
    pub fn translate(&self, body: &[u8], read_at_ms: u64) -> Result<Option<Translated>, String> {
        let (labels, attributes, json) = match self {
            Protocol::Aggregator => return Ok(None),
            Protocol::Loki { labels, json, .. } => (Some(labels), None, *json),
            Protocol::Otlp { attributes } => (None, Some(attributes), None),
        };
        let batch = logship_wire::decode_file(body).map_err(|e| e.to_string())?;
        let first = batch.lines.first().map_or(0, |l| l.number);
        // Each line's read time in ns, strictly increasing through the batch: lines read in
        // the same millisecond (or across a clock stepped back) keep their order.
        let mut last = 0u64;
        let times: Vec<u64> = batch
            .lines
            .iter()
            .map(|l| {
                let ns = l.ts.unwrap_or(read_at_ms).saturating_mul(1_000_000);
                last = ns.max(last.saturating_add(1));
                last
            })
            .collect();
        let time = |n: u64| times[(n - first) as usize];
        // One entry an event: a line that continues the event before it (the source's
        // `multiline` rule) joins it, after a `\n`, at the event's first time.
        let cont = logship_wire::multi::continues(body).unwrap_or_default();
        let mut events: Vec<(u64, std::borrow::Cow<'_, [u8]>)> = Vec::new();
        let mut previous_sent = false;
        for (i, l) in batch.lines.iter().enumerate() {
            if l.partial {
                previous_sent = false;
                continue;
            }
            match events.last_mut() {
                Some((_, text)) if previous_sent && cont.get(i) == Some(&true) => {
                    let t = text.to_mut();
                    t.push(b'\n');
                    t.extend_from_slice(&l.content);
                }
                _ => events.push((time(l.number), std::borrow::Cow::Borrowed(&l.content[..]))),
            }
            previous_sent = true;
        }
        let lines = events.iter();
        if let Some(extra) = labels {
            let mut set: Vec<(String, String)> = vec![
                ("filename".into(), batch.file.to_string()),
                ("host".into(), batch.host.to_string()),
            ];
            set.extend(extra.iter().cloned());
            set.sort();
            if let Some(form) = json {
                return loki_json(&set, lines.map(|(ns, text)| (*ns, &text[..])), form).map(Some);
            }
            let req = loki::PushRequest {
                streams: vec![loki::StreamAdapter {
                    labels: logship_wire::push::render_labels(&set),
                    entries: lines
                        .map(|(ns, text)| {
                            let ns = *ns;
                            loki::EntryAdapter {
                                timestamp: Some(loki::Timestamp {
                                    seconds: (ns / 1_000_000_000) as i64,
                                    nanos: (ns % 1_000_000_000) as i32,
                                }),
                                line: Bytes::copy_from_slice(text),
                                structured_metadata: Vec::new(),
                            }
                        })
                        .collect(),
                    hash: 0,
                }],
            };
            let payload = snap::raw::Encoder::new()
                .compress_vec(&req.encode_to_vec())
                .map_err(|e| format!("snappy: {e}"))?;
            return Ok(Some(Translated {
                payload,
                content_type: "application/x-protobuf",
                compressible: false,
                encoding: None,
            }));
        }
        let string = |k: &str, v: &str| otlp::KeyValue {
            key: k.into(),
            value: Some(otlp::AnyValue {
                value: Some(otlp::Value::String(Bytes::copy_from_slice(v.as_bytes()))),
            }),
        };
        let base = batch.file.rsplit('/').next().unwrap_or(&batch.file);
        let mut resource = vec![
            string("host.name", &batch.host),
            string("log.file.path", &batch.file),
            string("log.file.name", base),
        ];
        resource.extend(attributes.into_iter().flatten().map(|(k, v)| string(k, v)));
        let req = otlp::ExportLogsServiceRequest {
            resource_logs: vec![otlp::ResourceLogs {
                resource: Some(otlp::Resource {
                    attributes: resource,
                }),
                scope_logs: vec![otlp::ScopeLogs {
                    log_records: lines
                        .map(|(ns, text)| {
                            let ns = *ns;
                            // A string body must be UTF-8; other bytes go as bytes.
                            let content = Bytes::copy_from_slice(text);
                            let value = if std::str::from_utf8(text).is_ok() {
                                otlp::Value::String(content)
                            } else {
                                otlp::Value::Bytes(content)
                            };
                            otlp::LogRecord {
                                time_unix_nano: ns,
                                observed_time_unix_nano: ns,
                                body: Some(otlp::AnyValue { value: Some(value) }),
                                attributes: Vec::new(),
                            }
                        })
                        .collect(),
                }],
            }],
        };
        Ok(Some(Translated {
            payload: req.encode_to_vec(),
            content_type: "application/x-protobuf",
            compressible: true,
            encoding: None,
        }))
    }

    /// Headers the protocol adds (Loki's tenant).
    pub fn headers(&self, h: &mut HeaderMap) {
        if let Protocol::Loki {
            tenant: Some(t), ..
        } = self
        {
            h.insert("x-scope-orgid", t.clone());
        }
    }

    /// Whether a 2xx `answer` acknowledges the compact `body`; if not, why (the endpoint is
    /// then not what the config says it is).
    pub fn acknowledged(&self, answer: &[u8], body: &[u8]) -> Result<(), String> {
        match self {
            Protocol::Aggregator => match acknowledged_lines(answer) {
                Some(n) if Some(n) == logship_wire::line_count_file(body) => Ok(()),
                _ => Err("without acknowledging the batch's lines; is the URL an aggregator's /store/batch?".into()),
            },
            Protocol::Loki { .. } => Ok(()),
            Protocol::Otlp { .. } => {
                // An empty answer is an empty response message; a partial success cannot say
                // which records it refused, so the batch stands acknowledged and the refusal
                // is reported.
                if let Ok(r) = otlp::ExportLogsServiceResponse::decode(answer) {
                    if let Some(p) = r.partial_success.filter(|p| p.rejected_log_records > 0) {
                        tracing::warn!(
                            rejected = p.rejected_log_records,
                            reason = %p.error_message,
                            "the OTLP endpoint refused some records of a batch"
                        );
                    }
                }
                Ok(())
            }
        }
    }
}

/// Loki's JSON push body, `{"streams":[{"stream":{labels},"values":[["<ns>","line"],…]}]}`,
/// gzip-compressed per `form`. JSON strings are text: bytes that are not UTF-8 become
/// replacement characters (the protobuf form carries any bytes).
fn loki_json<'a>(
    labels: &[(String, String)],
    lines: impl Iterator<Item = (u64, &'a [u8])>,
    form: JsonForm,
) -> Result<Translated, String> {
    let stream: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
        .collect();
    let values: Vec<serde_json::Value> = lines
        .map(|(ns, line)| serde_json::json!([ns.to_string(), String::from_utf8_lossy(line)]))
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({
        "streams": [{ "stream": stream, "values": values }]
    }))
    .map_err(|e| e.to_string())?;
    if !form.gzip {
        return Ok(Translated {
            payload: body,
            content_type: "application/json",
            compressible: false,
            encoding: None,
        });
    }
    use std::io::Write as _;
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(&body)
        .and_then(|()| g.finish())
        .map(|payload| Translated {
            payload,
            content_type: "application/json",
            compressible: false,
            encoding: Some("gzip"),
        })
        .map_err(|e| format!("gzip: {e}"))
}

/// The `stored` count of an aggregator's acknowledgement `{"stored": N, "new": M}`.
fn acknowledged_lines(body: &[u8]) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Ack {
        stored: u64,
    }
    let ack: Ack = serde_json::from_slice(body).ok()?;
    u32::try_from(ack.stored).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compact() -> Vec<u8> {
        let mut w = logship_wire::compact::Writer::new("web-1", "/var/log/app.log", "g", 10);
        w.push(b"first", false);
        w.push(b"\xffsecond", false);
        w.push(b"part", true);
        w.finish()
    }

    /// The streams of a translated Loki push (protobuf + snappy).
    fn loki_streams(t: &Translated) -> Vec<logship_wire::push::Stream> {
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&t.payload)
            .expect("snappy");
        logship_wire::loki::decode_protobuf(Bytes::from(raw), &logship_wire::Limits::NONE)
            .expect("decode")
    }

    #[test]
    fn loki_bodies_carry_labels_times_and_complete_lines() {
        let p = Protocol::Loki {
            labels: vec![("job".into(), "app".into())],
            tenant: None,
            json: None,
        };
        let t = p
            .translate(&compact(), 1_790_000_000_000)
            .expect("ok")
            .expect("some");
        let streams = loki_streams(&t);
        assert_eq!(
            streams[0].labels,
            [
                ("filename".into(), "/var/log/app.log".into()),
                ("host".into(), "web-1".into()),
                ("job".into(), "app".into())
            ]
        );
        let got: Vec<(u64, &[u8])> = streams[0]
            .entries
            .iter()
            .map(|e| (e.ts_ns, &e.line[..]))
            .collect();
        assert_eq!(
            got,
            [
                (1_790_000_000_000_000_000, &b"first"[..]),
                (1_790_000_000_000_000_001, &b"\xffsecond"[..])
            ],
            "the partial line is not sent"
        );
        // A retry carries the very same body.
        let again = p
            .translate(&compact(), 1_790_000_000_000)
            .expect("ok")
            .expect("some");
        assert_eq!(again.payload, t.payload);
    }

    /// A batch carries each line's read time: Loki entries get them, in ns, still strictly
    /// increasing where lines share a millisecond or the clock stepped back.
    #[test]
    fn each_line_goes_with_the_time_it_was_read() {
        let mut w = logship_wire::multi::Writer::new("h", "/f", "g", 0, 5_000);
        for (line, ms) in [
            (&b"a"[..], 5_000),
            (b"b", 5_000),
            (b"c", 5_007),
            (b"d", 4_000),
        ] {
            w.push(line, false, ms);
        }
        let p = Protocol::Loki {
            labels: Vec::new(),
            tenant: None,
            json: None,
        };
        let t = p.translate(&w.finish(), 1).expect("ok").expect("some");
        let streams = loki_streams(&t);
        let got: Vec<u64> = streams[0].entries.iter().map(|e| e.ts_ns).collect();
        let ms = 1_000_000;
        assert_eq!(
            got,
            [5_000 * ms, 5_000 * ms + 1, 5_007 * ms, 5_007 * ms + 1]
        );
    }

    /// Loki's JSON form: the same stream, times as strings of ns, gzip-compressed.
    #[test]
    fn loki_json_bodies_are_lokis_json_push_form() {
        let p = Protocol::Loki {
            labels: vec![("job".into(), "app".into())],
            tenant: None,
            json: Some(JsonForm { gzip: true }),
        };
        let t = p
            .translate(&compact(), 1_790_000_000_000)
            .expect("ok")
            .expect("some");
        assert_eq!(
            (t.content_type, t.encoding),
            ("application/json", Some("gzip"))
        );
        let mut raw = Vec::new();
        use std::io::Read as _;
        flate2::read::GzDecoder::new(&t.payload[..])
            .read_to_end(&mut raw)
            .expect("gzip");
        let v: serde_json::Value = serde_json::from_slice(&raw).expect("json");
        assert_eq!(v["streams"][0]["stream"]["job"], "app");
        assert_eq!(v["streams"][0]["stream"]["host"], "web-1");
        assert_eq!(
            v["streams"][0]["values"],
            serde_json::json!([
                ["1790000000000000000", "first"],
                ["1790000000000000001", "\u{fffd}second"]
            ])
        );
    }

    /// Lines marked as continuing an event (the source's `multiline` rule) go as one
    /// entry, at the event's first time; the partial last line is left out.
    #[test]
    fn an_event_of_several_lines_is_one_entry() {
        let mut w = logship_wire::multi::Writer::new("h", "/f", "g", 0, 7);
        w.push_in_event(
            b"Exception in thread \"main\" java.lang.Error",
            false,
            false,
            7,
        );
        w.push_in_event(b"\tat a.B.c(B.java:10)", false, true, 7);
        w.push_in_event(b"\tat a.B.main(B.java:3)", false, true, 8);
        w.push_in_event(b"INFO next", false, false, 9);
        w.push_in_event(b"INFO part", true, false, 9);
        let p = Protocol::Loki {
            labels: Vec::new(),
            tenant: None,
            json: None,
        };
        let t = p.translate(&w.finish(), 1).expect("ok").expect("some");
        let got: Vec<(u64, Vec<u8>)> = loki_streams(&t)[0]
            .entries
            .iter()
            .map(|e| (e.ts_ns, e.line.to_vec()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    7_000_000,
                    b"Exception in thread \"main\" java.lang.Error\n\tat a.B.c(B.java:10)\n\tat a.B.main(B.java:3)".to_vec()
                ),
                (9_000_000, b"INFO next".to_vec()),
            ]
        );
    }

    #[test]
    fn only_a_matching_count_is_an_acknowledgement() {
        assert_eq!(acknowledged_lines(br#"{"stored":3,"new":1}"#), Some(3));
        for body in [&b"ok"[..], b"", b"{}", br#"{"stored":"3"}"#, b"<html>"] {
            assert_eq!(acknowledged_lines(body), None, "{body:?}");
        }
    }

    #[test]
    fn otlp_bodies_carry_the_file_as_resource_attributes() {
        let p = Protocol::Otlp {
            attributes: vec![("service.name".into(), "app".into())],
        };
        let t = p.translate(&compact(), 1_000).expect("ok").expect("some");
        let req = otlp::ExportLogsServiceRequest::decode(&t.payload[..]).expect("decode");
        let rl = &req.resource_logs[0];
        let keys: Vec<&str> = rl
            .resource
            .as_ref()
            .expect("resource")
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "host.name",
                "log.file.path",
                "log.file.name",
                "service.name"
            ]
        );
        let records = &rl.scope_logs[0].log_records;
        assert_eq!(records.len(), 2);
        assert!(matches!(
            records[1].body.as_ref().and_then(|b| b.value.as_ref()),
            Some(otlp::Value::Bytes(_))
        ));
    }
}
