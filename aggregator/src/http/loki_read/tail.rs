//! `GET /loki/api/v1/tail` (WebSocket): the lines of the streams a query selects as they
//! arrive, each message `{"streams":[{"stream":{…},"values":[["<ns>","line"]]}]}`, as Loki
//! sends them. A tail counts against `max_followers`. It places a cursor at each selected
//! stream's end, first sends the newest `limit` matching lines since `start` (default an
//! hour ago) that lie before those cursors, then wakes on ingest events of its streams
//! (and polls them every second; streams that appear later are found every 5 s), reads
//! each stream onward as a follow does, applies the line filters, and ends when the client closes, the server
//! stops, or the client stops reading for 60 s. `delay_for` is accepted and not used.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::logql::{self, Expr, Filter, Matcher};
use super::streams::{labels_of, resolve};
use super::ApiError;
use crate::http::body::{full, Body};
use crate::App;

/// Bytes read from one stream per turn.
const READ_BYTES: usize = 256 * 1024;
/// The store is walked for streams that appeared since, every this many seconds.
const REFRESH_TICKS: u32 = 5;
/// A client that takes nothing for this long is let go.
const SEND_WAIT: Duration = Duration::from_secs(60);

/// Where a tail is in one stream.
struct Cursor {
    generation: u64,
    /// The generation's name, and those of the stream's older generations: the backlog's
    /// lines before the cursor are theirs.
    name: String,
    older: Vec<String>,
    next: u64,
}

pub async fn tail(
    app: &std::sync::Arc<App>,
    req: Request<Incoming>,
    p: &[(String, String)],
) -> Result<Response<Body>, ApiError> {
    let text = super::param(p, "query")
        .ok_or_else(|| ApiError::bad_request("missing parameter `query`"))?;
    let (selector, filters) = match logql::parse(text).map_err(ApiError::bad_request)? {
        Expr::Logs { selector, filters } => (selector, filters),
        Expr::Vector(_) => return Err(ApiError::bad_request("tail takes a log query")),
    };
    let regexes = filters.iter().map(compile).collect::<Result<Vec<_>, _>>()?;
    let upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).filter(|_| upgrade) else {
        return Err(ApiError::bad_request(
            "tail is a WebSocket: send Upgrade: websocket and Sec-WebSocket-Key",
        ));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let permit = app.followers.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live tails (max_followers); retry later",
        )
        .retry_after(5)
    })?;
    let limit = super::param(p, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(100)
        .min(usize::try_from(app.settings().search_max_limit).unwrap_or(usize::MAX));
    let now = super::range::now_ns();
    let start = super::param(p, "start")
        .map(|t| super::range::time_ns("start", t))
        .transpose()?
        .unwrap_or(now.saturating_sub(3_600_000_000_000));
    let app = app.clone();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let _permit = permit;
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                let tail = Tail {
                    selector,
                    filters: regexes,
                    logql_filters: filters,
                    limit,
                    start,
                    cursors: HashMap::new(),
                };
                tail.run(&app, ws).await;
            }
            Err(e) => tracing::debug!(error = %e, "tail upgrade failed"),
        }
    });
    let mut resp = Response::new(full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).map_err(|e| ApiError::bad_request(e.to_string()))?,
    );
    Ok(resp)
}

fn compile(f: &Filter) -> Result<(regex::bytes::Regex, bool), ApiError> {
    let pattern = if f.regex {
        f.text.clone()
    } else {
        regex::escape(&f.text)
    };
    regex::bytes::RegexBuilder::new(&pattern)
        .size_limit(1 << 20)
        .build()
        .map(|r| (r, f.negate))
        .map_err(|e| ApiError::bad_request(format!("line filter {:?}: {e}", f.text)))
}

struct Tail {
    selector: Vec<Matcher>,
    filters: Vec<(regex::bytes::Regex, bool)>,
    logql_filters: Vec<Filter>,
    limit: usize,
    /// The backlog's start, ns since the epoch.
    start: u64,
    cursors: HashMap<(String, String), Cursor>,
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

impl Tail {
    async fn run(mut self, app: &std::sync::Arc<App>, mut ws: Ws) {
        let mut written = app.subscribe_written();
        let mut stopping = app.stopping();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // Streams that exist now start at their ends; the backlog is what lies before them.
        let backlog = match self.refresh(app, true).await {
            Ok(()) => self.backlog(app).await,
            Err(e) => Err(e),
        };
        let Ok(backlog) = backlog else {
            let _ = ws.close(None).await;
            return;
        };
        for message in backlog {
            let sent = tokio::time::timeout(SEND_WAIT, ws.send(Message::text(message))).await;
            if !matches!(sent, Ok(Ok(()))) {
                return;
            }
        }
        // What to read next: the streams an ingest event named, or — every second, and
        // after missed events — all of them. The whole store is walked for streams that
        // appeared only every REFRESH_TICKS seconds: a busy fleet's events must not make
        // every tail list the store once per write.
        let mut dirty: HashSet<u64> = HashSet::new();
        let mut all = false;
        let mut ticks = 0u32;
        loop {
            let mut refresh = false;
            tokio::select! {
                _ = tick.tick() => {
                    all = true;
                    ticks += 1;
                    refresh = ticks.is_multiple_of(REFRESH_TICKS);
                }
                ev = written.recv() => match ev {
                    Ok(hash) => {
                        if self.cursors.keys().any(|(h, f)| crate::file_hash(h, f) == hash) {
                            dirty.insert(hash);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => all = true,
                    Err(_) => return,
                },
                msg = ws.next() => match msg {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                },
                _ = async { stopping.wait_for(|s| *s).await.is_ok() } => {
                    let _ = ws.close(None).await;
                    return;
                }
            }
            if !all && dirty.is_empty() {
                continue;
            }
            if refresh && self.refresh(app, false).await.is_err() {
                let _ = ws.close(None).await;
                return;
            }
            let only = (!all).then(|| std::mem::take(&mut dirty));
            all = false;
            dirty.clear();
            let Ok(batch) = self.collect(app, only.as_ref()).await else {
                let _ = ws.close(None).await;
                return;
            };
            for message in batch {
                let sent = tokio::time::timeout(SEND_WAIT, ws.send(Message::text(message))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            }
        }
    }

    /// Finds the streams the selector admits and places a cursor for each new one: at its
    /// end when `at_end` (the streams of the tail's start), else at its beginning (a stream
    /// that appeared since).
    async fn refresh(&mut self, app: &App, at_end: bool) -> Result<(), ApiError> {
        let resolved = resolve(app, &self.selector).await?;
        for (host, file) in resolved.pairs {
            if self.cursors.contains_key(&(host.clone(), file.clone())) {
                continue;
            }
            let gens = app.store.generations(&host, &file).await?;
            let Some(g) = gens.last() else { continue };
            let next = if at_end && g.lines > 0 {
                g.max_line + 1
            } else {
                0
            };
            self.cursors.insert(
                (host, file),
                Cursor {
                    generation: g.id,
                    name: g.name.clone(),
                    older: gens[..gens.len() - 1]
                        .iter()
                        .map(|g| g.name.clone())
                        .collect(),
                    next,
                },
            );
        }
        Ok(())
    }

    /// The newest `limit` matching lines since `start` that lie before the cursors (those
    /// after them are the follow's), oldest first, as messages.
    async fn backlog(&self, app: &App) -> Result<Vec<String>, ApiError> {
        let found = super::range::find(
            app,
            super::range::Ask {
                selector: &self.selector,
                filters: &self.logql_filters,
                start_ns: self.start,
                end_ns: super::range::now_ns(),
                limit: self.limit as u64,
                backward: true,
            },
        )
        .await?
        .found;
        let mut before: Vec<super::range::Found> = found
            .into_iter()
            .filter(|f| {
                self.cursors
                    .get(&(f.host.clone(), f.file.clone()))
                    .is_some_and(|c| {
                        (f.generation == c.name && f.line < c.next)
                            || c.older.contains(&f.generation)
                    })
            })
            .collect();
        if before.is_empty() {
            return Ok(Vec::new());
        }
        before.reverse();
        Ok(vec![message(super::range::streams_of(before))])
    }

    /// Reads the streams onward from their cursors (those whose file hash is in `only`, or
    /// all); the messages to send.
    async fn collect(
        &mut self,
        app: &App,
        only: Option<&HashSet<u64>>,
    ) -> Result<Vec<String>, ApiError> {
        let mut messages = Vec::new();
        let mut streams = Vec::new();
        let mut count = 0usize;
        for ((host, file), cursor) in self.cursors.iter_mut() {
            if only.is_some_and(|o| !o.contains(&crate::file_hash(host, file))) {
                continue;
            }
            // A rotated file: a newer generation is read from its beginning.
            let gens = app.store.generations(host, file).await?;
            if let Some(g) = gens.last().filter(|g| g.id != cursor.generation) {
                *cursor = Cursor {
                    generation: g.id,
                    name: g.name.clone(),
                    older: Vec::new(),
                    next: 0,
                };
            }
            let chunk = app
                .store
                .read_chunk(
                    cursor.generation,
                    cursor.next,
                    u64::MAX,
                    READ_BYTES,
                    true,
                    true,
                )
                .await?;
            if chunk.lines.is_empty() {
                continue;
            }
            cursor.next = chunk.end;
            let mut values = Vec::new();
            for (i, l) in chunk.lines.iter().enumerate() {
                let line = chunk.line(i);
                if !self
                    .filters
                    .iter()
                    .all(|(r, negate)| r.is_match(line) != *negate)
                {
                    continue;
                }
                let ns = l.ts.unwrap_or(0).saturating_mul(1_000_000);
                values.push(serde_json::json!([
                    ns.to_string(),
                    String::from_utf8_lossy(line)
                ]));
            }
            if values.is_empty() {
                continue;
            }
            count += values.len();
            streams.push(serde_json::json!({"stream": labels_of(host, file), "values": values}));
            if count >= self.limit {
                messages.push(message(std::mem::take(&mut streams)));
                count = 0;
            }
        }
        if !streams.is_empty() {
            messages.push(message(streams));
        }
        Ok(messages)
    }
}

fn message(streams: Vec<serde_json::Value>) -> String {
    serde_json::json!({"streams": streams, "dropped_entries": null}).to_string()
}
