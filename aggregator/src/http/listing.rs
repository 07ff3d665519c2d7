//! `GET /store/hosts` and `GET /store/files`: listings streamed page by page from the store,
//! so a store of a hundred thousand files never becomes one answer in memory (45k files
//! with long names used to cost +650 MB per call). `limit=` bounds an answer and `after=`
//! continues one: a limited answer ends with `"next"`, the cursor to pass as `after`.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};

use super::body::{streamed, Body, StreamSender};
use super::error::ApiError;
use super::query::Params;
use crate::store::FileInfo;
use crate::App;

/// Items fetched from the store per step.
const PAGE: usize = 256;
/// A client that accepts nothing for this long is disconnected.
const STALLED_CLIENT: std::time::Duration = std::time::Duration::from_secs(60);
/// The largest `limit=` accepted.
const MAX_LIMIT: u64 = 100_000;

fn limit(p: &Params) -> Result<Option<usize>, ApiError> {
    match p.number("limit")? {
        Some(0) => Err(ApiError::bad_request(
            "parameter `limit` must be at least 1",
        )),
        Some(n) if n > MAX_LIMIT => Err(ApiError::bad_request(format!(
            "parameter `limit` must be at most {MAX_LIMIT}"
        ))),
        n => Ok(n.map(|n| n as usize)),
    }
}

/// The `after` cursor of a files listing: base64url of `host \n file` (names hold no
/// control characters, so the split is unambiguous).
fn file_cursor(host: &str, file: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{host}\n{file}"))
}

fn parse_file_cursor(s: &str) -> Result<(String, String), ApiError> {
    let bad = || ApiError::bad_request("parameter `after` is not a cursor from a `next` field");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (h, f) = text.split_once('\n').ok_or_else(bad)?;
    Ok((h.to_owned(), f.to_owned()))
}

pub async fn hosts(app: &Arc<App>, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    app.authorize(req, &app.settings().read_tokens)?;
    let p = Params::parse(req.uri().query(), &["limit", "after"])?;
    let after = p.optional("after").map(str::to_owned);
    let busy = app.metrics.http.worker_busy.clone();
    let app = app.clone();
    let listing = Listing {
        field: "hosts",
        limit: limit(&p)?,
        fetch: move |after: Option<String>, n| {
            let app = app.clone();
            async move { app.store.hosts_page(after.as_deref(), n).await }
        },
        key: |h: &String| h.clone(),
        render: |h: &String| serde_json::Value::from(h.as_str()).to_string(),
        cursor: |k: &String| k.clone(),
        busy,
    };
    listing.serve(after).await
}

pub async fn files(app: &Arc<App>, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    app.authorize(req, &app.settings().read_tokens)?;
    let p = Params::parse(req.uri().query(), &["host", "file", "limit", "after"])?;
    let host = p.optional("host").map(str::to_owned);
    // One file by name (the page opens a search result with it).
    if let Some(file) = p.optional("file") {
        let host = host.ok_or_else(|| ApiError::bad_request("`file` needs `host`"))?;
        let generations = app.store.generations(&host, file).await?;
        let files: Vec<serde_json::Value> = if generations.is_empty() {
            Vec::new()
        } else {
            vec![file_json(&FileInfo {
                host,
                file: file.to_owned(),
                generations,
            })]
        };
        let mut resp = Response::new(super::body::full(
            serde_json::json!({ "files": files }).to_string(),
        ));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(resp);
    }
    let after = p.optional("after").map(parse_file_cursor).transpose()?;
    let busy = app.metrics.http.worker_busy.clone();
    let app = app.clone();
    let listing = Listing {
        field: "files",
        limit: limit(&p)?,
        fetch: move |after: Option<(String, String)>, n| {
            let (app, host) = (app.clone(), host.clone());
            async move {
                let after = after.as_ref().map(|(h, f)| (h.as_str(), f.as_str()));
                app.store.files_page(host.as_deref(), after, n).await
            }
        },
        key: |f: &FileInfo| (f.host.clone(), f.file.clone()),
        render: |f: &FileInfo| file_json(f).to_string(),
        cursor: |(h, f): &(String, String)| file_cursor(h, f),
        busy,
    };
    listing.serve(after).await
}

/// One paged listing: `{"<field>":[…]}` (plus `"next"` when `limit` cut it short), fetched
/// from the store `PAGE` items at a time and streamed.
struct Listing<F, K, T> {
    field: &'static str,
    limit: Option<usize>,
    /// Fetches up to `n` items after a key.
    fetch: F,
    key: fn(&T) -> K,
    render: fn(&T) -> String,
    cursor: fn(&K) -> String,
    /// Where the stream's worker-busy time is observed.
    busy: prometheus_client::metrics::histogram::Histogram,
}

impl<F, Fut, K, T> Listing<F, K, T>
where
    F: Fn(Option<K>, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Vec<T>, crate::store::StoreError>> + Send,
    K: Clone + Send + 'static,
    T: Send + 'static,
{
    async fn serve(self, after: Option<K>) -> Result<Response<Body>, ApiError> {
        // The first page is read before answering, so a store error is a proper 503.
        let first = (self.fetch)(after, PAGE.min(self.limit.unwrap_or(PAGE))).await?;
        let (tx, body) = streamed(2);
        let mut resp = Response::new(body);
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let busy = self.busy.clone();
        tokio::spawn(crate::busy::Timed::new(
            async move {
                if let Some(tail) = self.stream(first, &tx).await {
                    if tx.send(Bytes::from(tail)).await {
                        tx.finish();
                    }
                }
            },
            busy,
            "listing stream",
        ));
        Ok(resp)
    }

    /// Sends the items; returns the closing text, or `None` if the client left or the store
    /// failed (the response is then aborted, never cut short looking complete).
    async fn stream(&self, mut page: Vec<T>, tx: &StreamSender) -> Option<String> {
        let mut sent = 0usize;
        let mut out = format!("{{\"{}\":[", self.field);
        loop {
            let last = page.last().map(self.key);
            crate::busy::offload(|| {
                for item in &page {
                    if sent > 0 {
                        out.push(',');
                    }
                    out.push_str(&(self.render)(item));
                    sent += 1;
                }
            });
            let data = Bytes::from(std::mem::take(&mut out));
            // A client that stops reading is let go, as for downloads.
            if tx.send_within(data, STALLED_CLIENT).await != super::body::Sent::Taken {
                return None;
            }
            let Some(last) = last else {
                return Some("]}".to_owned());
            };
            let want = self.limit.map_or(PAGE, |l| PAGE.min(l - sent));
            let next = (self.fetch)(Some(last.clone()), want.max(1)).await;
            page = match next {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e.report(), listing = self.field, "listing aborted by a store error");
                    return None;
                }
            };
            if want == 0 {
                // Limit reached: say where to continue if anything is left.
                return Some(if page.is_empty() {
                    "]}".to_owned()
                } else {
                    let next = serde_json::Value::from((self.cursor)(&last));
                    format!("],\"next\":{next}}}")
                });
            }
            if page.is_empty() {
                return Some("]}".to_owned());
            }
        }
    }
}

fn file_json(f: &FileInfo) -> serde_json::Value {
    let rfc3339 = |t| humantime::format_rfc3339_millis(t).to_string();
    serde_json::json!({
        "host": f.host,
        "file": f.file,
        "generations": f.generations.iter().map(|g| {
            let mut v = serde_json::json!({
                "generation": g.name,
                "lines": g.lines,
                "max_line": g.max_line,
                "first_write": rfc3339(g.first_write),
                "last_write": rfc3339(g.last_write),
            });
            // Lines before it are gone (retention trimmed them) or were never sent.
            if let Some(first) = g.first_line {
                v["first_line"] = first.into();
            }
            v
        }).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_a_400() {
        let c = file_cursor("h\u{e9}", "/a b/c?d");
        assert_eq!(
            parse_file_cursor(&c).expect("cursor"),
            ("h\u{e9}".to_owned(), "/a b/c?d".to_owned())
        );
        for bad in ["!!", "aGVsbG8", ""] {
            assert_eq!(parse_file_cursor(bad).expect_err(bad).status, 400);
        }
    }
}
