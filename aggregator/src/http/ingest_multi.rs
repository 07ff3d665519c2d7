//! `POST /store/batch` in the multi-file form (`LSB2`): one host's batches of many files in
//! one request, stored with one durable write (one group-commit wait for the request, not
//! one per file), acknowledged per section.
//!
//! A section that cannot be stored (a bad name, a line over `max_line_bytes`) is refused
//! alone, with the status it would have had as a request of its own; the others are stored.
//! What concerns the whole request (its framing, its size, the host's rate limit, the store
//! being unavailable) is answered for the whole request, as for the single-file form.
//!
//! Each line carries the time the agent read it; a time in the future or more than
//! [`MAX_AGE`] old (a host clock that is wrong) is replaced by the time of receipt, so a
//! skewed agent cannot put lines where retention would drop them at once.

use std::time::Duration;

use hyper::header::CONTENT_TYPE;
use hyper::{Response, StatusCode};
use logship_wire::FileBatch;

use super::body::{full, Body};
use super::error::ApiError;
use super::ingest::{check_buckets, refusal, written};
use crate::App;

/// The oldest agent read time taken as it is.
const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The response header naming the compact forms this aggregator takes.
pub const ACCEPT_HEADER: &str = "x-logship-accept";
/// Its value.
pub const FORMS: &str = "LSB1, LSB2";

pub(super) async fn ingest(app: &App, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let limits = app.settings().decode_limits;
    let multi = crate::busy::offload_if(body.len() > crate::busy::INLINE_BYTES, || {
        logship_wire::multi::decode_limited(body, &limits)
    })
    .map_err(refusal)?;
    let now = now_ms();
    let oldest = now.saturating_sub(MAX_AGE.as_millis() as u64);
    let mut batches: Vec<FileBatch<'_>> = Vec::with_capacity(multi.sections.len());
    let mut verdicts: Vec<Result<usize, ApiError>> = Vec::with_capacity(multi.sections.len());
    for section in multi.sections {
        match section {
            Ok(mut b) => {
                for l in &mut b.lines {
                    l.ts = l.ts.map(|t| if t > now || t < oldest { now } else { t });
                }
                verdicts.push(Ok(b.lines.len()));
                batches.push(b);
            }
            Err(e) => verdicts.push(Err(refusal(e))),
        }
    }
    // A body of one section is answered as the single-file form would be.
    if let [Err(_)] = verdicts.as_slice() {
        if let Some(Err(e)) = verdicts.pop() {
            return Err(e);
        }
    }
    check_buckets(app, &batches)?;
    app.check_rate(&batches)?;
    let stats = if batches.is_empty() {
        logship_store::WriteStats::default()
    } else {
        app.store.write(&batches).await?
    };
    written(app, &batches, stats);
    let mut out = format!(
        "{{\"stored\":{},\"new\":{},\"sections\":[",
        stats.lines, stats.new_lines
    );
    for (i, v) in verdicts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match v {
            Ok(n) => out.push_str(&format!("{{\"stored\":{n}}}")),
            Err(e) => out.push_str(&format!(
                "{{\"status\":{},\"error\":{}}}",
                e.status.as_u16(),
                serde_json::Value::from(e.message.as_str())
            )),
        }
    }
    out.push_str("]}");
    let mut resp = Response::new(full(out));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
