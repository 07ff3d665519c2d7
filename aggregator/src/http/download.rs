//! `GET /store/log`: a generation's lines streamed from range scans, a chunk at a time,
//! so memory stays flat whatever the file's size. A client that stops reading is cut off
//! after a deadline instead of pinning a task forever.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};

use super::body::{streamed, Body};
use super::error::ApiError;
use super::query::Params;
use crate::store::GenerationInfo;
use crate::App;

/// Bytes rendered per store read; also the unit of back-pressure.
const CHUNK_BYTES: usize = 256 * 1024;
/// A client that accepts nothing for this long is disconnected.
const STALLED_CLIENT: Duration = Duration::from_secs(60);

/// The resolved request: which generation and which lines.
#[derive(Debug)]
struct Selection {
    generation: GenerationInfo,
    from: u64,
    to: u64,
}

pub async fn download(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    app.authorize(&req, &app.settings.read_tokens)?;
    let p = Params::parse(
        req.uri().query(),
        &["host", "file", "generation", "from", "to", "tail", "follow"],
    )?;
    if p.flag("follow")? {
        return Err(ApiError::bad_request("follow=true is not supported yet"));
    }
    let sel = select(app, &p).await?;
    let (tx, body) = streamed(2);
    let store = app.store.clone();
    tokio::spawn(async move {
        let mut cursor = Some(sel.from);
        while let Some(from) = cursor {
            let chunk = match store
                .read_chunk(sel.generation.id, from, sel.to, CHUNK_BYTES)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "download aborted by a store error");
                    return;
                }
            };
            cursor = chunk.next;
            if chunk.data.is_empty() {
                continue;
            }
            match tx
                .sender()
                .send_timeout(Bytes::from(chunk.data), STALLED_CLIENT)
                .await
            {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::SendTimeoutError::Timeout(_)) => {
                    tracing::info!("download client stalled; disconnecting");
                    return;
                }
                Err(_) => return, // client went away
            }
        }
        tx.finish();
    });
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&sel.generation.name) {
        h.insert("x-logship-generation", v);
    }
    Ok(resp)
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
        generation,
        from,
        to,
    })
}
