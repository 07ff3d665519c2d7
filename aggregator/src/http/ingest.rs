//! `POST /store/batch`: read the body within its limits, decompress it within its limits,
//! decode either wire form, apply the per-host rate limit, store durably, acknowledge.

use std::borrow::Cow;
use std::io::Read;
use std::num::NonZeroU32;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use super::body::{full, Body};
use super::error::ApiError;
use crate::App;

/// Handles one ingest request.
pub async fn ingest(app: &App, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    app.authorize(&req, &app.settings.write_tokens)?;
    let max = app.settings.max_body_bytes;
    let encoding = header(&req, CONTENT_ENCODING)?.map(str::to_ascii_lowercase);
    let content_type = header(&req, CONTENT_TYPE)?.map(str::to_owned);
    if let Some(len) = header(&req, CONTENT_LENGTH)? {
        let len: u64 = len
            .parse()
            .map_err(|_| ApiError::bad_request("Content-Length is not a number"))?;
        if len > max {
            return Err(too_large(max));
        }
    }
    let body = read_body(req.into_body(), max, app).await?;
    let decoded = decompress(&body, encoding.as_deref(), app.settings.max_decoded_bytes)?;
    let batches = logship_wire::decode(&decoded, content_type.as_deref())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    app.check_rate(&batches)?;
    let stats = app.store.write(&batches).await?;
    app.metrics.lines_received.inc_by(stats.lines);
    app.metrics.lines_new.inc_by(stats.new_lines);
    app.metrics.bytes_received.inc_by(stats.bytes);
    for b in &batches {
        app.notify_written(&b.host, &b.file);
    }
    let body = serde_json::json!({ "stored": stats.lines, "new": stats.new_lines }).to_string();
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
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

/// Reads the body, enforcing the size limit while reading and a deadline for slow senders.
async fn read_body(body: Incoming, max: u64, app: &App) -> Result<Bytes, ApiError> {
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let read = Limited::new(body, limit).collect();
    match tokio::time::timeout(app.settings.body_read_timeout, read).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "body not received within {:?}",
                app.settings.body_read_timeout
            ),
        )),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(max)),
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "could not read the body: {e}"
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Decompresses per `Content-Encoding`, never producing more than `max` bytes, so a small
/// compression bomb costs at most `max` bytes of memory.
fn decompress<'a>(
    body: &'a [u8],
    encoding: Option<&str>,
    max: u64,
) -> Result<Cow<'a, [u8]>, ApiError> {
    let reader: Box<dyn Read + 'a> = match encoding {
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
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max as usize));
    match tokio::task::block_in_place(|| reader.take(max + 1).read_to_end(&mut out)) {
        Ok(n) if n as u64 > max => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body decompresses to more than max_decoded_bytes ({max} bytes)"),
        )),
        Ok(_) => Ok(Cow::Owned(out)),
        Err(e) => Err(ApiError::bad_request(format!(
            "body is not valid {} data: {e}",
            encoding.unwrap_or("")
        ))),
    }
}

/// Lines of each host in a request, for the rate limiter.
pub fn lines_per_host<'a>(
    batches: &'a [logship_wire::FileBatch<'a>],
) -> Vec<(&'a str, NonZeroU32)> {
    let mut out: Vec<(&str, u64)> = Vec::new();
    for b in batches {
        match out.iter_mut().find(|(h, _)| *h == b.host.as_ref()) {
            Some((_, n)) => *n += b.lines.len() as u64,
            None => out.push((&b.host, b.lines.len() as u64)),
        }
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
        let e = decompress(&bomb, Some("zstd"), 1000).expect_err("bomb");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let e = decompress(b"not zstd at all", Some("zstd"), 1000).expect_err("lie");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = decompress(b"x", Some("br"), 1000).expect_err("unknown");
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let small = zstd::encode_all(&b"hello"[..], 1).expect("compress");
        let ok = decompress(&small, Some("zstd"), 1000).expect("ok");
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
            let decoded = decompress(&body, enc, 1 << 20).expect("valid body decompresses");
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
            if let Ok(d) = decompress(&bad, enc, 1 << 20) {
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
