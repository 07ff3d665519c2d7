//! Pushes from other shippers: Loki's push API ([`loki`]) and OTLP/HTTP logs ([`otlp`]).
//! Both decode (in `logship_wire`) to labelled streams of timed lines; what follows is shared
//! and here: the write token (bearer, or basic auth's password as Loki clients send it), the
//! body within the same limits and memory budget as `/store/batch`, each stream mapped to a
//! host and file ([`mapping`]), numbered and checked for resends ([`streams`]), the per-host
//! rate limit, one durable write.
//!
//! Pushed lines go to a generation of their own per aggregator (`push`, or `push@<node>`
//! when several aggregators share a Redis store, so two nodes never number the same lines;
//! `push.node`, by default `<hostname>:<listen port>`), and keep the sender's time as their
//! per-line time.

pub mod loki;
mod mapping;
pub mod otlp;
pub mod streams;

use std::borrow::Cow;

use base64::Engine as _;
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Request, StatusCode};
use logship_wire::push::Stream;
use logship_wire::{FileBatch, Line};

use super::error::ApiError;
use crate::App;
use mapping::Mapping;
use streams::{entry_hash, StreamKey};

/// What a push stored and what it left out.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Lines stored.
    pub stored: u64,
    /// Entries that were resends of lines among the stream's last ones.
    pub duplicates: u64,
    /// Entries refused (each named in `why`), the rest stored.
    pub rejected: u64,
    pub why: String,
}

/// Checks the write token: `Authorization: Bearer <token>`, or basic auth with the token as
/// the password (the user is not checked), which is what Loki clients send.
pub fn authorize(app: &App, req: &Request<Incoming>) -> Result<(), ApiError> {
    authorize_with(app, req, &app.settings().write_tokens)
}

/// As [`authorize`], against `tokens` (the read tokens, for Loki's query API: Grafana's
/// data source sends basic auth too).
pub fn authorize_with(
    app: &App,
    req: &Request<Incoming>,
    tokens: &[logship_common::config::Secret],
) -> Result<(), ApiError> {
    let basic = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, rest)| rest.trim());
    match basic {
        Some(encoded)
            if !tokens.is_empty() && req.headers().get_all(AUTHORIZATION).iter().count() == 1 =>
        {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| ApiError::bad_request("basic auth credentials are not base64"))?;
            let password = match decoded.iter().position(|&b| b == b':') {
                Some(at) => &decoded[at + 1..],
                None => &decoded[..],
            };
            if App::token_accepted(tokens, password) {
                Ok(())
            } else {
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "basic auth password is not an accepted token",
                ))
            }
        }
        _ => app.authorize(req, tokens),
    }
}

/// What both push routes start with: the write token, then the body read and decompressed
/// within the limits; and the settings in force.
async fn receive_push(
    app: &App,
    req: Request<Incoming>,
) -> Result<
    (
        super::ingest::Received,
        std::sync::Arc<crate::config::Settings>,
    ),
    ApiError,
> {
    authorize(app, &req)?;
    let received = super::ingest::receive(app, req).await?;
    Ok((received, app.settings()))
}

/// Whether a generation holds pushed lines, whose times are their senders' (not bounded by
/// when the generation was written).
pub fn carries_sender_times(generation: &str) -> bool {
    generation == "push" || generation.starts_with("push@")
}

/// The generation pushed lines of this aggregator go to.
fn generation(app: &App) -> String {
    let s = app.settings();
    match s.backend {
        crate::config::Backend::Sled => "push".to_string(),
        _ => match &s.push.node {
            Some(node) => format!("push@{node}"),
            None => {
                let host = gethostname::gethostname().to_string_lossy().into_owned();
                format!("push@{host}:{}", s.listen.port())
            }
        },
    }
}

/// One stream's lines after mapping, in the order they were sent: (time in ms, or `None`
/// to be stamped on receipt; the line).
struct Group {
    key: StreamKey,
    entries: Vec<(Option<u64>, bytes::Bytes)>,
}

/// Maps streams to host + file (merging streams that map to the same), drops a line's one
/// trailing `\n`, and refuses lines over `max_line_bytes`.
fn group(
    streams: Vec<Stream>,
    mapping: &Mapping<'_>,
    max_line_bytes: usize,
    outcome: &mut Outcome,
) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for s in streams {
        let (host, file) = mapping.map(&s.labels);
        let key = StreamKey { host, file };
        let at = match groups.iter().position(|g| g.key == key) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    key,
                    entries: Vec::new(),
                });
                groups.len() - 1
            }
        };
        for e in s.entries {
            let mut line = e.line;
            if line.last() == Some(&b'\n') {
                line.truncate(line.len() - 1);
            }
            if line.len() > max_line_bytes {
                outcome.rejected += 1;
                if outcome.why.is_empty() {
                    outcome.why = format!(
                        "line of {} bytes in stream {}:{} is over limits.max_line_bytes ({max_line_bytes} bytes)",
                        line.len(),
                        groups[at].key.host,
                        groups[at].key.file
                    );
                }
                continue;
            }
            let ts = (e.ts_ns > 0).then_some(e.ts_ns / 1_000_000);
            groups[at].entries.push((ts, line));
        }
    }
    groups.retain(|g| !g.entries.is_empty());
    groups
}

/// Entries past which a push's per-entry work (mapping, hashing, numbering, dropping)
/// runs off the async workers.
const INLINE_ENTRIES: usize = 1_000;

/// A push's batches to write and, per stream (in key order), the hashes of its resent
/// entries (whose counts are restored after the write) and of its new ones (remembered
/// once stored).
struct Numbered<'a> {
    batches: Vec<FileBatch<'a>>,
    seen: Vec<Vec<u64>>,
    fresh: Vec<Vec<u64>>,
}

/// Numbers each stream's new entries from its state's next number, leaving out resends.
fn number<'a>(
    groups: &'a [Group],
    locked: &mut [tokio::sync::OwnedMutexGuard<streams::State>],
    generation: &'a str,
) -> Numbered<'a> {
    let mut out = Numbered {
        batches: Vec::with_capacity(groups.len()),
        seen: Vec::with_capacity(groups.len()),
        fresh: Vec::with_capacity(groups.len()),
    };
    for (g, state) in groups.iter().zip(locked.iter_mut()) {
        let mut lines = Vec::with_capacity(g.entries.len());
        let (mut dup, mut new) = (Vec::new(), Vec::new());
        for (ts, line) in &g.entries {
            let h = entry_hash(ts.unwrap_or(0), line);
            if state.seen(h) {
                dup.push(h);
                continue;
            }
            new.push(h);
            lines.push(Line {
                number: state.next + lines.len() as u64,
                content: Cow::Borrowed(&line[..]),
                partial: false,
                ts: *ts,
            });
        }
        out.seen.push(dup);
        out.fresh.push(new);
        out.batches.push(FileBatch {
            host: Cow::Borrowed(&g.key.host),
            file: Cow::Borrowed(&g.key.file),
            generation: Cow::Borrowed(generation),
            lines,
        });
    }
    out
}

/// Numbers, de-duplicates and stores the streams of one push.
pub async fn store(
    app: &App,
    streams: Vec<Stream>,
    mapping: &Mapping<'_>,
) -> Result<Outcome, ApiError> {
    let settings = app.settings();
    let mut outcome = Outcome::default();
    let large = streams.iter().map(|s| s.entries.len()).sum::<usize>() > INLINE_ENTRIES;
    let max_line = settings.decode_limits.max_line_bytes;
    let mut groups =
        crate::busy::offload_if(large, || group(streams, mapping, max_line, &mut outcome));
    if groups.is_empty() {
        return Ok(outcome);
    }
    // Locked in key order, so two pushes naming the same streams cannot deadlock.
    groups.sort_by(|a, b| a.key.cmp(&b.key));
    let generation = generation(app);
    let window = settings.push.dedup_lines;
    let mut locked = Vec::with_capacity(groups.len());
    for g in &groups {
        let state = app.push_streams.get(&g.key, settings.push.dedup_memory);
        let mut guard = state.lock_owned().await;
        guard.load(&*app.store, &g.key, &generation, window).await?;
        locked.push(guard);
    }
    let Numbered {
        mut batches,
        seen,
        fresh,
    } = crate::busy::offload_if(large, || number(&groups, &mut locked, &generation));
    outcome.duplicates = seen.iter().map(|d| d.len() as u64).sum();
    batches.retain(|b| !b.lines.is_empty());
    let written = async {
        app.check_rate(&batches)?;
        if batches.is_empty() {
            return Ok(logship_store::WriteStats::default());
        }
        Ok::<_, ApiError>(app.store.write(&batches).await?)
    }
    .await;
    let stored = written.is_ok();
    crate::busy::offload_if(large, || {
        for ((state, dup), new) in locked.iter_mut().zip(&seen).zip(&fresh) {
            state.restore(dup);
            if stored {
                // Lines without a sender's time are remembered with time 0, as they were
                // hashed (after a restart they read back with their receive time: such
                // resends are caught only within one run).
                state.next += new.len() as u64;
                for h in new {
                    state.remember(*h, window);
                }
            }
        }
    });
    let stats = written?;
    super::ingest::written(app, &batches, stats);
    outcome.stored = stats.lines;
    // One free for the lines; a reference count per entry for what they borrowed.
    drop(batches);
    crate::busy::offload_if(large, move || drop(groups));
    Ok(outcome)
}

/// The host of a stream whose labels name none: `push.default_host`, else the client's
/// address.
pub fn default_host(app: &App, peer: std::net::SocketAddr) -> String {
    app.settings()
        .push
        .default_host
        .clone()
        .unwrap_or_else(|| peer.ip().to_string())
}
