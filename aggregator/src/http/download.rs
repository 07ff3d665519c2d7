//! `GET /store/log`: a generation's lines streamed from range scans, a chunk at a time,
//! so memory stays flat whatever the file's size. A client that stops reading is cut off
//! after a deadline instead of pinning a task forever.
//!
//! `follow=true` keeps the response open: after what is stored it streams each new line
//! as it lands, woken by ingest (not by polling the store). A follower only ever shows
//! the next line in order and only complete lines, so it never misses or repeats one even
//! when batches land out of order. When a newer generation appears and the current one
//! has been quiet for [`SWITCH_QUIET`], it follows the new one from its start: in the text
//! form it says so in one marker line; in `format=ndjson` every line is an object carrying
//! its generation and number, so nothing in-band (a log line that looks like the marker, a
//! gap in the numbers) can mislead a reader.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::body::{streamed, Body, StreamSender};
use super::error::ApiError;
use super::query::Params;
use crate::store::{GenerationInfo, Store};
use crate::App;

/// Bytes rendered per store read; also the unit of back-pressure.
const CHUNK_BYTES: usize = 256 * 1024;
/// A client that accepts nothing for this long is disconnected.
const STALLED_CLIENT: Duration = Duration::from_secs(60);
/// A follower re-checks the store this often even without ingest events (events can be
/// dropped for a follower that lags behind the broadcast).
const FOLLOW_RECHECK: Duration = Duration::from_secs(1);
/// A follower moves to a newer generation once the current one has been quiet this long
/// (a rotated file may still be draining into the old one).
const SWITCH_QUIET: Duration = Duration::from_millis(500);

/// The resolved request: which generation and which lines.
#[derive(Debug)]
struct Selection {
    host: String,
    file: String,
    generation: GenerationInfo,
    from: u64,
    to: u64,
}

pub async fn download(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    app.authorize_download(&req)?;
    let p = Params::parse(
        req.uri().query(),
        &[
            "host",
            "file",
            "generation",
            "from",
            "to",
            "tail",
            "follow",
            "format",
            "download",
        ],
    )?;
    let follow = p.flag("follow")?;
    let attachment = p.flag("download")?;
    let ndjson = p.one_of("format", &["text", "ndjson"])? == "ndjson";
    let sel = select(app, &p).await?;
    // A stored generation's answer changes only when it is written to: an ETag and
    // Last-Modified let a client (or a proxy) revalidate instead of downloading again.
    let validators = (!follow).then(|| Validators::of(&sel, ndjson));
    if let Some(v) = &validators {
        if v.unchanged_for(req.headers()) {
            let mut resp = Response::new(super::body::full(bytes::Bytes::new()));
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            v.insert(resp.headers_mut());
            return Ok(resp);
        }
    }
    let (tx, body) = streamed(2);
    let name = sel.generation.name.clone();
    let file_name = sel.file.clone();
    if follow {
        let permit = app.followers.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many followers; retry later",
            )
            .retry_after(5)
        })?;
        let app = app.clone();
        let busy = app.metrics.http.worker_busy.clone();
        tokio::spawn(crate::busy::Timed::new(
            async move {
                app.metrics.http.followers.inc();
                follow_stream(&app, sel, ndjson, &tx).await;
                app.metrics.http.followers.dec();
                drop(permit);
                tx.finish();
            },
            busy,
            "follow stream",
        ));
    } else {
        let permit = app.downloads.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many downloads in progress (max_downloads); retry later",
            )
            .retry_after(1)
        })?;
        let store = app.store.clone();
        let busy = app.metrics.http.worker_busy.clone();
        tokio::spawn(crate::busy::Timed::new(
            async move {
                let _permit = permit;
                let numbered = ndjson.then_some(sel.generation.name.as_str());
                if stream_range(
                    store.as_ref(),
                    sel.generation.id,
                    sel.from,
                    sel.to,
                    false,
                    numbered,
                    &tx,
                )
                .await
                .is_some()
                {
                    tx.finish();
                }
            },
            busy,
            "download stream",
        ));
    }
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    // Log bytes may be any bytes: no charset is claimed for them.
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(if ndjson {
            "application/x-ndjson"
        } else {
            "text/plain"
        }),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    match &validators {
        Some(v) => {
            v.insert(h);
            h.insert("cache-control", HeaderValue::from_static("no-cache"));
        }
        None => {
            h.insert("cache-control", HeaderValue::from_static("no-store"));
        }
    }
    if attachment {
        h.insert(
            hyper::header::CONTENT_DISPOSITION,
            content_disposition(&file_name),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&name) {
        h.insert("x-logship-generation", v);
    }
    Ok(resp)
}

/// `ETag` and `Last-Modified` of a download: the generation's state (id, line count,
/// highest line, last write) and what was asked of it.
///
/// HTTP dates have whole seconds, and the last write is in ms: a `Last-Modified` of the
/// write's own second, checked with `<=`, answered 304 to a client whose copy predates a
/// second write in the same second (issue 29.5). So `Last-Modified` is the first whole second
/// *after* the last write, sent only once that second is at least a second old (a write
/// stamped just before a response but committed just after it is then also later than the
/// date handed out), and `If-Modified-Since` means "written before that second": a 304 only
/// when the last write's second is strictly earlier. The ETag carries ms and is exact.
struct Validators {
    etag: String,
    /// Whole seconds since the epoch of the last write.
    modified_secs: u64,
}

/// Whole seconds since the epoch (0 before it).
fn epoch_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Validators {
    fn of(sel: &Selection, ndjson: bool) -> Self {
        let g = &sel.generation;
        let ms = g
            .last_write
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Validators {
            etag: format!(
                "\"{:x}-{:x}-{:x}-{ms:x}-{:x}-{:x}-{}\"",
                g.id,
                g.lines,
                g.max_line,
                sel.from,
                sel.to,
                if ndjson { "j" } else { "t" }
            ),
            modified_secs: epoch_secs(g.last_write),
        }
    }

    /// Whether the request's `If-None-Match` (or, without it, `If-Modified-Since`) says the
    /// client already has this answer.
    fn unchanged_for(&self, headers: &hyper::HeaderMap) -> bool {
        if let Some(inm) = headers.get(hyper::header::IF_NONE_MATCH) {
            let Ok(inm) = inm.to_str() else { return false };
            return inm
                .split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.trim_start_matches("W/") == self.etag);
        }
        headers
            .get(hyper::header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since| self.modified_secs < epoch_secs(since))
    }

    /// The `Last-Modified` to send at `now`, if any yet.
    fn last_modified(&self, now: std::time::SystemTime) -> Option<std::time::SystemTime> {
        let after = self.modified_secs.saturating_add(1);
        (epoch_secs(now) > after)
            .then(|| std::time::UNIX_EPOCH + std::time::Duration::from_secs(after))
    }

    fn insert(&self, h: &mut hyper::HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.etag) {
            h.insert(hyper::header::ETAG, v);
        }
        if let Some(t) = self.last_modified(std::time::SystemTime::now()) {
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(t)) {
                h.insert(hyper::header::LAST_MODIFIED, v);
            }
        }
    }
}

/// `attachment` with the file's base name: an ASCII fallback and the exact name in UTF-8
/// (RFC 6266), so a browser saves `app.log`, not `log`.
fn content_disposition(file: &str) -> HeaderValue {
    let base = file.rsplit('/').find(|s| !s.is_empty()).unwrap_or("log");
    let ascii: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in base.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Renders a chunk as NDJSON: one object per line with its generation and number; content
/// as a string, or base64 in `content_base64` when it is not UTF-8.
fn ndjson(generation: &str, chunk: &crate::store::Chunk) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.data.len() + chunk.lines.len() * 48);
    for (i, l) in chunk.lines.iter().enumerate() {
        let end = chunk.lines.get(i + 1).map_or(chunk.data.len(), |n| n.start);
        let content = &chunk.data[l.start..end];
        let content = content
            .strip_suffix(b"\n")
            .filter(|_| !l.partial)
            .unwrap_or(content);
        let mut v = serde_json::json!({ "generation": generation, "line": l.number });
        super::line_json::set_content(&mut v, content, l.partial);
        super::line_json::set_time(&mut v, l.ts);
        out.extend_from_slice(v.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// Sends lines `from..=to` of generation `id` (as NDJSON when `numbered` names the
/// generation); returns the line after the last one sent, or `None` when the client went
/// away, stalled, or the store failed.
async fn stream_range(
    store: &dyn Store,
    id: u64,
    from: u64,
    to: u64,
    contiguous: bool,
    numbered: Option<&str>,
    tx: &StreamSender,
) -> Option<u64> {
    let mut cursor = from;
    loop {
        let chunk = match store
            .read_chunk(id, cursor, to, CHUNK_BYTES, contiguous, numbered.is_some())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(generation_id = id, from = cursor, error = %e.report(), "download aborted by a store error");
                return None;
            }
        };
        if !chunk.data.is_empty() {
            let data = match numbered {
                Some(generation) => crate::busy::offload(|| ndjson(generation, &chunk)),
                None => chunk.data,
            };
            match tx.send_within(Bytes::from(data), STALLED_CLIENT).await {
                super::body::Sent::Taken => {}
                super::body::Sent::Stalled => {
                    tracing::info!("download client stalled; disconnecting");
                    return None;
                }
                super::body::Sent::Gone => return None,
            }
        }
        match chunk.next {
            Some(n) => cursor = n,
            None => {
                return Some(if contiguous {
                    chunk.end
                } else {
                    to.saturating_add(1)
                })
            }
        }
    }
}

/// The follow loop: stored lines first, then new ones as they land, across generations.
async fn follow_stream(app: &Arc<App>, sel: Selection, ndjson: bool, tx: &StreamSender) {
    let mut events = app.subscribe_written();
    let mut stopping = app.stopping();
    let key = crate::file_hash(&sel.host, &sel.file);
    let mut generation = sel.generation;
    let mut cursor = sel.from;
    let mut last_progress = Instant::now();
    loop {
        let Some(end) = stream_range(
            app.store.as_ref(),
            generation.id,
            cursor,
            u64::MAX >> 8,
            true,
            ndjson.then_some(generation.name.as_str()),
            tx,
        )
        .await
        else {
            return;
        };
        if end != cursor {
            cursor = end;
            last_progress = Instant::now();
        }
        if last_progress.elapsed() >= SWITCH_QUIET {
            if let Ok(gens) = app.store.generations(&sel.host, &sel.file).await {
                if let Some(newer) = gens.into_iter().find(|g| g.id > generation.id) {
                    // NDJSON lines carry their generation: no in-band marker needed.
                    let marker = format!("--- logship: new generation {} ---\n", newer.name);
                    if !ndjson && !tx.send(Bytes::from(marker)).await {
                        return;
                    }
                    generation = newer;
                    cursor = 0;
                    last_progress = Instant::now();
                    continue;
                }
            }
        }
        // Wait for ingest into this file, a periodic re-check, or shutdown.
        let deadline = Instant::now() + FOLLOW_RECHECK.min(SWITCH_QUIET);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(h) if h == key => break,
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                },
                () = tokio::time::sleep_until(deadline) => break,
                _ = stopping.changed() => return,
                () = tx.sender().closed() => return,
            }
        }
    }
}

/// Resolves host/file/generation and the line range.
async fn select(app: &App, p: &Params) -> Result<Selection, ApiError> {
    let host = p.required("host")?;
    let file = p.required("file")?;
    let mut gens = app.store.generations(host, file).await?;
    if gens.is_empty() {
        return Err(ApiError::not_found(format!(
            "no file {file:?} stored for host {host:?}"
        )));
    }
    let generation = match p.optional("generation") {
        Some(name) => {
            let i = gens.iter().position(|g| g.name == name).ok_or_else(|| {
                ApiError::not_found(format!(
                    "file {file:?} of host {host:?} has no generation {name:?}"
                ))
            })?;
            gens.swap_remove(i)
        }
        None => gens
            .pop()
            .ok_or_else(|| ApiError::not_found("no generation"))?,
    };
    let (from, to, tail) = (p.number("from")?, p.number("to")?, p.number("tail")?);
    if tail.is_some() && from.is_some() {
        return Err(ApiError::bad_request(
            "give either `tail` or `from`, not both",
        ));
    }
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(ApiError::bad_request(format!(
                "`from` ({f}) is after `to` ({t})"
            )));
        }
    }
    // An empty range (tail=0, or from past the end) is simply `from > to`.
    let to = to.unwrap_or(generation.max_line).min(generation.max_line);
    let from = match tail {
        Some(n) => (to + 1).saturating_sub(n),
        None => from.unwrap_or(0),
    };
    Ok(Selection {
        host: host.to_owned(),
        file: file.to_owned(),
        generation,
        from,
        to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(ms: u64) -> std::time::SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn since(ms: u64) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        let v = httpdate::fmt_http_date(at(ms));
        h.insert(
            hyper::header::IF_MODIFIED_SINCE,
            HeaderValue::from_str(&v).expect("date"),
        );
        h
    }

    fn written_at(ms: u64) -> Validators {
        Validators {
            etag: String::new(),
            modified_secs: ms / 1000,
        }
    }

    #[test]
    fn a_write_in_the_same_second_is_never_answered_304() {
        // The client's copy is from 10.1 s (its date says second 10); a write at 10.7 s.
        assert!(!written_at(10_700).unchanged_for(&since(10_100)));
        // Written before the second named: unchanged.
        assert!(written_at(9_900).unchanged_for(&since(10_100)));
    }

    #[test]
    fn last_modified_is_given_once_it_cannot_hide_a_later_write() {
        let v = written_at(10_200);
        assert_eq!(v.last_modified(at(10_900)), None);
        assert_eq!(v.last_modified(at(11_999)), None);
        let lm = v
            .last_modified(at(12_000))
            .expect("a second after the next");
        assert_eq!(lm, at(11_000));
        // Revalidating with it: 304 while unchanged, 200 after any later write.
        assert!(v.unchanged_for(&since(11_000)));
        assert!(!written_at(12_000).unchanged_for(&since(11_000)));
    }
}
