//! A discarding HTTP sink for the agent-alone scenario: reads and decodes every body (so
//! it can check completeness), answers at once, keeps only counts. It takes our compact
//! form, and Loki's protobuf push (`--sink-extra 'type = "loki"'`), whose lines it numbers
//! per file in the order they come (the agent sends a file's batches one at a time there).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;

/// Per file: the set of line numbers seen, as a count of distinct lines and the max.
#[derive(Debug, Default)]
pub struct Seen {
    /// file → (distinct lines, content bytes)
    pub files: HashMap<String, (u64, u64)>,
    /// file → bitmap of received line numbers
    bits: HashMap<String, Vec<u64>>,
    /// file → the number the next pushed line (which has none) gets.
    next: HashMap<String, u64>,
}

impl Seen {
    /// Counts lines of `file` given as (number, content bytes): one map lookup for all of
    /// them, so the sink's own cost stays small beside the agent it measures.
    fn add_all(&mut self, file: &str, lines: impl IntoIterator<Item = (u64, u64)>) {
        if !self.bits.contains_key(file) {
            self.bits.insert(file.to_owned(), Vec::new());
            self.files.insert(file.to_owned(), (0, 0));
        }
        let (Some(bits), Some(e)) = (self.bits.get_mut(file), self.files.get_mut(file)) else {
            return;
        };
        for (line, bytes) in lines {
            let (w, b) = ((line / 64) as usize, line % 64);
            if bits.len() <= w {
                bits.resize((w + 1).max(bits.len() * 2), 0);
            }
            if bits[w] & (1 << b) == 0 {
                bits[w] |= 1 << b;
                e.0 += 1;
                e.1 += bytes;
            }
        }
    }

    /// Counts pushed lines of `file` (content bytes each), numbered in arrival order.
    fn push_all(&mut self, file: &str, lines: &[u64]) {
        let first = match self.next.get_mut(file) {
            Some(n) => n,
            None => self.next.entry(file.to_owned()).or_default(),
        };
        let start = *first;
        *first += lines.len() as u64;
        self.add_all(
            file,
            lines
                .iter()
                .enumerate()
                .map(|(i, b)| (start + i as u64, *b)),
        );
    }

    pub fn total_lines(&self) -> u64 {
        self.files.values().map(|v| v.0).sum()
    }
}

/// What `--serve-sink` prints before the sink's base URL.
pub const LISTENING: &str = "sink listening on ";

/// Runs the sink until killed: the `--serve-sink` process, on a runtime like the
/// aggregator's default (half the cores serve connections).
pub fn serve() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(logship_common::default_worker_threads())
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (addr, _seen) = start().await?;
        println!("{LISTENING}http://{addr}");
        std::future::pending::<anyhow::Result<()>>().await
    })
}

/// Starts the sink on an ephemeral port.
pub async fn start() -> anyhow::Result<(SocketAddr, Arc<Mutex<Seen>>)> {
    start_on("127.0.0.1:0".parse()?).await
}

/// Starts the sink on `addr` (one a down sink's agent has been trying).
pub async fn start_on(addr: SocketAddr) -> anyhow::Result<(SocketAddr, Arc<Mutex<Seen>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let zstd = req
                            .headers()
                            .get("content-encoding")
                            .is_some_and(|v| v == "zstd");
                        let loki = req
                            .headers()
                            .get("content-type")
                            .is_some_and(|v| v == "application/x-protobuf");
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let raw = if zstd {
                            zstd::decode_all(&body[..]).unwrap_or_default()
                        } else {
                            body.to_vec()
                        };
                        if loki {
                            let status = match loki_lines(&raw) {
                                Some(lines) => {
                                    let mut g = seen
                                        .lock()
                                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                                    for (file, bytes) in lines {
                                        g.push_all(&file, &bytes);
                                    }
                                    204
                                }
                                None => 400,
                            };
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() =
                                hyper::StatusCode::from_u16(status).unwrap_or_default();
                            return Ok::<_, std::convert::Infallible>(r);
                        }
                        if logship_wire::multi::is_multi(&raw) {
                            let (status, text) = match multi_lines(&raw) {
                                Some((sections, total)) => {
                                    let mut g = seen
                                        .lock()
                                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                                    let mut acks = Vec::with_capacity(sections.len());
                                    for (file, count, lines) in sections {
                                        acks.push(format!("{{\"stored\":{count}}}"));
                                        g.add_all(&file, lines);
                                    }
                                    let text = format!(
                                        "{{\"stored\":{total},\"new\":0,\"sections\":[{}]}}",
                                        acks.join(",")
                                    );
                                    (200, text)
                                }
                                None => (400, "{\"error\":\"bad batch\"}".to_owned()),
                            };
                            let mut r = Response::new(Full::new(Bytes::from(text)));
                            *r.status_mut() =
                                hyper::StatusCode::from_u16(status).unwrap_or_default();
                            r.headers_mut().insert(
                                "x-logship-accept",
                                hyper::header::HeaderValue::from_static("LSB1, LSB2"),
                            );
                            return Ok::<_, std::convert::Infallible>(r);
                        }
                        let (status, text) = match logship_wire::compact::decode(&raw) {
                            Ok(b) => {
                                let mut g = seen
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                                g.add_all(
                                    &b.file,
                                    b.lines
                                        .iter()
                                        .filter(|l| !l.partial)
                                        .map(|l| (l.number, l.content.len() as u64)),
                                );
                                // The acknowledgement the agent checks: the batch's line count.
                                (200, format!("{{\"stored\":{},\"new\":0}}", b.lines.len()))
                            }
                            Err(_) => (400, "{\"error\":\"bad batch\"}".to_owned()),
                        };
                        let mut r = Response::new(Full::new(Bytes::from(text)));
                        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
                        // Answers as an aggregator that takes the multi-file form.
                        r.headers_mut().insert(
                            "x-logship-accept",
                            hyper::header::HeaderValue::from_static("LSB1, LSB2"),
                        );
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((addr, seen))
}

/// The file and the content bytes of every entry of each stream of a Loki push (snappy +
/// protobuf), in order.
fn loki_lines(body: &[u8]) -> Option<Vec<(String, Vec<u64>)>> {
    let raw = snap::raw::Decoder::new().decompress_vec(body).ok()?;
    let streams =
        logship_wire::loki::decode_protobuf(Bytes::from(raw), &logship_wire::Limits::NONE).ok()?;
    let mut out = Vec::new();
    for s in streams {
        let file = s
            .labels
            .iter()
            .find(|(k, _)| k == "filename")
            .map(|(_, v)| v.clone())?;
        out.push((
            file,
            s.entries.iter().map(|e| e.line.len() as u64).collect(),
        ));
    }
    Some(out)
}

/// Each section of a multi-file body: its file, its line count (the acknowledgement the agent
/// checks) and its complete lines (number, content bytes); and how many lines the body holds
/// in all. `None` if it does not decode.
#[allow(clippy::type_complexity)]
fn multi_lines(raw: &[u8]) -> Option<(Vec<(String, usize, Vec<(u64, u64)>)>, usize)> {
    let m = logship_wire::multi::decode_limited(raw, &logship_wire::Limits::NONE).ok()?;
    let mut total = 0;
    let mut out = Vec::with_capacity(m.sections.len());
    for s in m.sections {
        let b = s.ok()?;
        total += b.lines.len();
        let lines = b
            .lines
            .iter()
            .filter(|l| !l.partial)
            .map(|l| (l.number, l.content.len() as u64))
            .collect();
        out.push((b.file.into_owned(), b.lines.len(), lines));
    }
    Some((out, total))
}
