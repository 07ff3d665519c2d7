//! `POST /store/batch`: read the body within its limits, decompress it within its limits,
//! decode either wire form, apply the per-host rate limit, store durably, acknowledge.
//!
//! Every request takes its share of a global memory budget (`limits.ingest_memory`) before
//! it reads, decompresses (1 MiB at a time) and decodes, so many small bodies that expand
//! cannot together hold more than the budget; past it a request waits briefly, then gets 503
//! with `Retry-After`. Decompression and decoding run in `block_in_place`, so other
//! connections keep their worker threads.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::num::NonZeroU32;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use bytes::Bytes;
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use super::body::{full, Body};
use super::error::ApiError;
use crate::App;

/// Handles one ingest request.
pub async fn ingest(app: &App, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    app.authorize(&req, &app.settings().write_tokens)?;
    let Received {
        data: decoded,
        content_type,
        mut budget,
    } = receive(app, req).await?;
    // What decoding allocates: one `Line` (~40 bytes) per line, at most one per byte.
    let limits = &app.settings().decode_limits;
    let lines = (limits.max_lines as u64).min(decoded.len() as u64);
    budget.reserve(lines.saturating_mul(48)).await?;
    let json = content_type
        .as_deref()
        .is_some_and(|c| c.trim_start().starts_with("application/json"));
    if !json && logship_wire::multi::is_multi(&decoded) {
        if !app.settings().multi_file_bodies {
            // As an aggregator before the multi-file form answers it.
            return Err(ApiError::bad_request(
                logship_wire::DecodeError::BadMagic.to_string(),
            ));
        }
        return super::ingest_multi::ingest(app, &decoded).await;
    }
    let batches = crate::busy::offload_if(decoded.len() > crate::busy::INLINE_BYTES, || {
        decode(app, &decoded, content_type.as_deref())
    })?;
    app.check_rate(&batches)?;
    let stats = app.store.write(&batches).await?;
    written(app, &batches, stats);
    // Two numbers: formatted directly rather than through a `serde_json::Value` (a map and
    // its keys allocated per request, for every small batch of a fleet).
    let body = format!("{{\"stored\":{},\"new\":{}}}", stats.lines, stats.new_lines);
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// After a durable write: counts it, and wakes the followers of every file it touched.
pub(super) fn written(
    app: &App,
    batches: &[logship_wire::FileBatch<'_>],
    stats: logship_store::WriteStats,
) {
    app.metrics.ingest.lines_received.inc_by(stats.lines);
    app.metrics.ingest.lines_new.inc_by(stats.new_lines);
    app.metrics.ingest.bytes_received.inc_by(stats.bytes);
    for b in batches {
        app.notify_written(&b.host, &b.file);
        app.metrics.fleet.saw(&b.host, b.lines.len() as u64);
    }
}

fn header(
    req: &Request<Incoming>,
    name: hyper::header::HeaderName,
) -> Result<Option<&str>, ApiError> {
    let mut values = req.headers().get_all(&name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(format!(
            "header {name} given more than once"
        )));
    }
    first
        .to_str()
        .map(|s| Some(s.trim()))
        .map_err(|_| ApiError::bad_request(format!("header {name} is not visible ASCII")))
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body larger than max_body_bytes ({max} bytes); send smaller batches"),
    )
}

/// A request body read and decompressed within the limits, and the share of the memory
/// budget it holds (kept until the request is answered).
pub(super) struct Received {
    pub(super) data: Bytes,
    pub(super) content_type: Option<String>,
    pub(super) budget: Budget,
}

/// Reads and decompresses a body (per `Content-Encoding`) within `max_body_bytes`,
/// `max_decoded_bytes` and the ingest memory budget: what every ingest route starts with.
pub(super) async fn receive(app: &App, req: Request<Incoming>) -> Result<Received, ApiError> {
    let max = app.settings().max_body_bytes;
    let encoding = header(&req, CONTENT_ENCODING)?.map(str::to_ascii_lowercase);
    let content_type = header(&req, CONTENT_TYPE)?.map(str::to_owned);
    let content_length = match header(&req, CONTENT_LENGTH)? {
        Some(len) => {
            let len: u64 = len
                .parse()
                .map_err(|_| ApiError::bad_request("Content-Length is not a number"))?;
            if len > max {
                return Err(too_large(max));
            }
            Some(len)
        }
        None => None,
    };
    let mut budget = Budget::new(app);
    budget.reserve(content_length.unwrap_or(max)).await?;
    let body = read_body(req.into_body(), max, content_length, app).await?;
    let decoded = decompress(
        &mut budget,
        &body,
        encoding.as_deref(),
        app.settings().max_decoded_bytes,
    )
    .await?;
    let data = match decoded {
        Cow::Borrowed(_) => body.clone(),
        Cow::Owned(v) => Bytes::from(v),
    };
    Ok(Received {
        data,
        content_type,
        budget,
    })
}

/// Reads the body, enforcing the size limit while reading, a deadline for the whole body,
/// and — after `body_grace` — a minimum average rate, so a client trickling bytes cannot
/// hold a connection (and its memory) for the whole `body_read_timeout`.
async fn read_body(
    body: Incoming,
    max: u64,
    content_length: Option<u64>,
    app: &App,
) -> Result<Bytes, ApiError> {
    use hyper::body::Body as _;
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let mut body = Limited::new(body, limit);
    let s = app.settings();
    let started = tokio::time::Instant::now();
    let last = started + s.body_read_timeout;
    let rate = s.min_body_bytes_per_sec.max(1) as f64;
    let mut data = Vec::with_capacity(content_length.unwrap_or(0).min(max) as usize);
    loop {
        // The next byte is due when the average rate since the grace period would drop
        // below the minimum.
        let due = started + s.body_grace + Duration::from_secs_f64(data.len() as f64 / rate);
        let deadline = due.min(last);
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
        match tokio::time::timeout_at(deadline, frame).await {
            Err(_) => {
                let why = if deadline == last {
                    format!("body not received within {:?}", s.body_read_timeout)
                } else {
                    format!(
                        "body arrives slower than min_body_bytes_per_sec ({} bytes/s); {} bytes in {:?}",
                        s.min_body_bytes_per_sec,
                        data.len(),
                        started.elapsed()
                    )
                };
                return Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, why));
            }
            Ok(None) => return Ok(Bytes::from(data)),
            Ok(Some(Err(e))) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(too_large(max))
            }
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(format!(
                    "could not read the body: {e}"
                )))
            }
            Ok(Some(Ok(frame))) => {
                if let Some(chunk) = frame.data_ref() {
                    data.extend_from_slice(chunk);
                }
            }
        }
    }
}

/// The answer a body that does not decode gets: 413 for one over a limit, else 400.
pub(super) fn refusal(e: logship_wire::DecodeError) -> ApiError {
    match e {
        logship_wire::DecodeError::TooLarge(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m),
        e => ApiError::bad_request(e.to_string()),
    }
}

/// Decodes either wire form within the request limits, and checks how many buckets the
/// lines touch (sparse line numbers cost the store far more than their count says).
fn decode<'a>(
    app: &App,
    body: &'a [u8],
    content_type: Option<&str>,
) -> Result<Vec<logship_wire::FileBatch<'a>>, ApiError> {
    let batches = logship_wire::decode_limited(body, content_type, &app.settings().decode_limits)
        .map_err(refusal)?;
    check_buckets(app, &batches)?;
    Ok(batches)
}

/// Refuses a request whose lines fall in more buckets than `max_buckets_per_request`.
pub(super) fn check_buckets(
    app: &App,
    batches: &[logship_wire::FileBatch<'_>],
) -> Result<(), ApiError> {
    let max = app.settings().max_buckets_per_request;
    let buckets = crate::store::distinct_buckets(batches);
    if buckets > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the lines fall in {buckets} ranges of 128 line numbers, more than \
                 limits.max_buckets_per_request ({max}); send fewer, contiguous lines per request"
            ),
        ));
    }
    Ok(())
}

/// This request's share of the global ingest memory budget, returned when it drops.
pub(super) struct Budget {
    /// The whole budget, in KiB permits.
    pool: Arc<Semaphore>,
    total_kib: u64,
    wait: Duration,
    refusals: Counter,
    held: Option<OwnedSemaphorePermit>,
}

impl Budget {
    pub(super) fn new(app: &App) -> Self {
        Budget {
            pool: app.ingest_memory.clone(),
            total_kib: app.settings().ingest_memory / 1024,
            wait: app.settings().ingest_memory_wait,
            refusals: app.metrics.ingest.ingest_memory_refusals.clone(),
            held: None,
        }
    }

    /// Takes `bytes` more (in KiB permits; a request larger than the whole budget takes all
    /// of it and so runs alone), waiting at most `ingest_memory_wait`.
    pub(super) async fn reserve(&mut self, bytes: u64) -> Result<(), ApiError> {
        let total = self.total_kib;
        let held = self.held.as_ref().map_or(0, |p| p.num_permits() as u64);
        let kib = bytes.div_ceil(1024).min(total.saturating_sub(held));
        let Ok(kib) = u32::try_from(kib) else {
            return Err(busy());
        };
        if kib == 0 {
            return Ok(());
        }
        let take = self.pool.clone().acquire_many_owned(kib);
        match tokio::time::timeout(self.wait, take).await {
            Ok(Ok(permit)) => {
                match &mut self.held {
                    Some(p) => p.merge(permit),
                    None => self.held = Some(permit),
                }
                Ok(())
            }
            _ => {
                self.refusals.inc();
                Err(busy())
            }
        }
    }
}

#[cfg(test)]
impl Budget {
    /// A budget that never runs out, for tests of the decode path.
    fn unlimited() -> Self {
        Budget {
            pool: Arc::new(Semaphore::new(1 << 30)),
            total_kib: 1 << 30,
            wait: Duration::from_secs(1),
            refusals: Counter::default(),
            held: None,
        }
    }
}

fn busy() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the aggregator is busy decoding other requests (limits.ingest_memory is spent); retry",
    )
    .retry_after(1)
}

thread_local! {
    /// One zstd decompression context per thread, reused across requests.
    static ZSTD: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses a body that is exactly one zstd frame of `size` bytes; `None` if it is not.
fn zstd_whole(body: &[u8], size: usize) -> Option<Vec<u8>> {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = zstd::bulk::Decompressor::new().ok();
        }
        let out = slot.as_mut()?.decompress(body, size).ok()?;
        (out.len() == size).then_some(out)
    })
}

/// Decompression output is taken from the budget this much at a time.
const DECOMPRESS_STEP: u64 = 1 << 20;

/// Decompresses per `Content-Encoding`, never producing more than `max` bytes (so a small
/// compression bomb costs at most `max` bytes of memory), taking each MiB of output from
/// the ingest budget before producing it.
async fn decompress<'a>(
    budget: &mut Budget,
    body: &'a [u8],
    encoding: Option<&str>,
    max: u64,
) -> Result<Cow<'a, [u8]>, ApiError> {
    // A zstd frame usually declares its size (the agent's does): take that much of the
    // budget at once, and decompress it in one call with this thread's reused context
    // (creating a context per request was ~1 % of the aggregator's CPU).
    let declared = match encoding {
        Some("zstd") => zstd::zstd_safe::get_frame_content_size(body).ok().flatten(),
        _ => None,
    };
    if let Some(n) = declared.filter(|&n| n <= max) {
        budget.reserve(n).await?;
        let large = n > crate::busy::INLINE_BYTES as u64;
        if let Some(out) = crate::busy::offload_if(large, || zstd_whole(body, n as usize)) {
            return Ok(Cow::Owned(out));
        }
        // Several frames, or a frame that lied about its size: the streaming path decides.
    }
    let mut reader: Box<dyn Read + Send + 'a> = match encoding {
        None | Some("identity") => return Ok(Cow::Borrowed(body)),
        Some("zstd") => Box::new(
            zstd::stream::read::Decoder::with_buffer(body)
                .map_err(|e| ApiError::bad_request(format!("cannot start zstd decoding: {e}")))?,
        ),
        Some("gzip") | Some("x-gzip") => Box::new(flate2::read::MultiGzDecoder::new(body)),
        Some(other) => {
            let shown: String = other.chars().take(32).collect();
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {shown:?} not supported; use zstd, gzip or identity"),
            ));
        }
    };
    let mut out = Vec::new();
    loop {
        let room = max + 1 - out.len() as u64;
        let step = DECOMPRESS_STEP.min(room);
        budget.reserve(step).await?;
        let large = step > crate::busy::INLINE_BYTES as u64;
        let read =
            crate::busy::offload_if(large, || (&mut reader).take(step).read_to_end(&mut out));
        match read {
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "body is not valid {} data: {e}",
                    encoding.unwrap_or("")
                )))
            }
            Ok(_) if out.len() as u64 > max => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body decompresses to more than max_decoded_bytes ({max} bytes)"),
                ))
            }
            Ok(n) if (n as u64) < step => return Ok(Cow::Owned(out)),
            Ok(_) => {}
        }
    }
}

/// Lines of each host in a request, for the rate limiter.
pub fn lines_per_host<'a>(
    batches: &'a [logship_wire::FileBatch<'a>],
) -> Vec<(&'a str, NonZeroU32)> {
    let mut out: HashMap<&str, u64> = HashMap::new();
    for b in batches {
        *out.entry(b.host.as_ref()).or_default() += b.lines.len() as u64;
    }
    out.into_iter()
        .filter_map(|(h, n)| NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)).map(|n| (h, n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn bombs_and_lies_are_client_errors() {
        let big = vec![b'a'; 1 << 20];
        let bomb = zstd::encode_all(&big[..], 19).expect("compress");
        let e = decompress(&mut Budget::unlimited(), &bomb, Some("zstd"), 1000)
            .await
            .expect_err("bomb");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let e = decompress(
            &mut Budget::unlimited(),
            b"not zstd at all",
            Some("zstd"),
            1000,
        )
        .await
        .expect_err("lie");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = decompress(&mut Budget::unlimited(), b"x", Some("br"), 1000)
            .await
            .expect_err("unknown");
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let small = zstd::encode_all(&b"hello"[..], 1).expect("compress");
        let ok = decompress(&mut Budget::unlimited(), &small, Some("zstd"), 1000)
            .await
            .expect("ok");
        assert_eq!(ok.as_ref(), b"hello");
    }
}

#[cfg(test)]
mod property {
    //! Property test of the whole decode path (both wire forms, each with and without
    //! compression): valid bodies decode to exactly what was encoded; mutated bodies are
    //! rejected or decoded, never a panic. Bounded: a fixed number of seeded cases.
    use super::*;
    use std::io::Write;

    fn compress(body: &[u8], how: u8) -> (Vec<u8>, Option<&'static str>) {
        match how % 3 {
            0 => (body.to_vec(), None),
            1 => (zstd::encode_all(body, 1).expect("zstd"), Some("zstd")),
            _ => {
                let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                g.write_all(body).expect("gzip");
                (g.finish().expect("gzip"), Some("gzip"))
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn both_forms_round_trip_and_mutations_never_panic() {
        let mut rng = fastrand_like::Rng(0x5eed);
        for case in 0..1500u32 {
            let n = (rng.next() % 20) as usize + 1;
            let start = rng.next() % 1000;
            let lines: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    (0..rng.next() % 40)
                        .map(|_| (rng.next() % 256) as u8)
                        .filter(|&b| b != b'\n')
                        .collect()
                })
                .collect();
            let json = case % 2 == 0;
            let (raw, ctype) = if json {
                let batch: Vec<serde_json::Value> = lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| serde_json::json!({"host": "h", "file": "/f", "line-num": start + i as u64, "content": String::from_utf8_lossy(l)}))
                    .collect();
                (
                    serde_json::json!({ "batch": batch })
                        .to_string()
                        .into_bytes(),
                    "application/json",
                )
            } else {
                let mut w = logship_wire::compact::Writer::new("h", "/f", "g", start);
                for l in &lines {
                    w.push(l, false);
                }
                (w.finish(), logship_wire::COMPACT_CONTENT_TYPE)
            };
            let (body, enc) = compress(&raw, (rng.next() % 3) as u8);
            let decoded = decompress(&mut Budget::unlimited(), &body, enc, 1 << 20)
                .await
                .expect("valid body decompresses");
            let batches = logship_wire::decode(&decoded, Some(ctype)).expect("valid body decodes");
            let got: Vec<(u64, Vec<u8>)> = batches[0]
                .lines
                .iter()
                .map(|l| (l.number, l.content.to_vec()))
                .collect();
            let want: Vec<(u64, Vec<u8>)> = lines
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let c = if json {
                        String::from_utf8_lossy(l).into_owned().into_bytes()
                    } else {
                        l.clone()
                    };
                    (start + i as u64, c)
                })
                .collect();
            assert_eq!(got, want, "case {case}");
            // Mutate the body as sent; whatever happens must be an answer, not a panic.
            let mut bad = body.clone();
            for _ in 0..=(rng.next() % 4) {
                let i = (rng.next() as usize) % bad.len();
                bad[i] = (rng.next() % 256) as u8;
            }
            if let Ok(d) = decompress(&mut Budget::unlimited(), &bad, enc, 1 << 20).await {
                let _ = logship_wire::decode(&d, Some(ctype));
            }
        }
    }

    /// xorshift, so the test needs no RNG crate and every run sees the same cases.
    mod fastrand_like {
        pub struct Rng(pub u64);
        impl Rng {
            pub fn next(&mut self) -> u64 {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0
            }
        }
    }
}
