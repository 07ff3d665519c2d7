//! `GET /store/search`: every stored line that matches, across hosts, files and
//! generations, streamed as it is found.
//!
//! The scan runs on a blocking thread (matching is CPU work), reads the store a chunk at a
//! time through [`Store::search_chunk`] — the next chunk is read while this one is matched —
//! and runs the pattern over the whole chunk at once, so the regex crate's literal
//! prefilters (memchr/SIMD) skip the bytes that cannot match; a hit is then checked against
//! its own line, so no match ever spans two lines. Results leave through a bounded channel:
//! memory is a few chunks whatever the store's size, and a client that goes away (or stops
//! reading) stops the scan at the next chunk. A time window (`since`/`until`, by when lines
//! were *received*) skips whole buckets unread, using the receive times kept in the index.
//!
//! Order: hosts, then files (in key order), then generations (oldest first), then lines.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use regex::bytes::{Regex, RegexBuilder};

use super::body::{streamed, Body, StreamSender};
use super::error::ApiError;
use super::query::Params;
use crate::store::{GenerationInfo, RawLine, Store, StoreError};
use crate::App;

/// Bytes of stored lines read per store call.
const CHUNK_BYTES: usize = 256 * 1024;
/// Output is sent in pieces of about this size.
const OUT_BYTES: usize = 64 * 1024;
/// The longest `q` accepted.
const MAX_PATTERN: usize = 4096;
/// Compiled-pattern limits: a pattern that needs more is refused with a 400.
const REGEX_SIZE: usize = 1 << 20;
const REGEX_DFA_SIZE: usize = 8 << 20;
/// Generations scanned at once (at most one per core).
const MAX_WORKERS: usize = 8;
/// Pieces of output (each about [`OUT_BYTES`]) waiting in one generation's channel.
const PART_QUEUE: usize = 8;
/// Output bytes the workers scanning generations after the one being sent may hold
/// together (besides the channel of the one being sent). Without a bound shared by all of
/// them, a search over many small generations rendered every one ahead of a client that did
/// not read: ~1 GB for 256 files under 4 KB names (issue 29.1).
const AHEAD_BYTES: usize = 2 << 20;
/// A search whose client takes longer than this (or than `search.timeout`, if shorter) to
/// take the next piece of output has stalled: it ends and frees its slot (issue 29.2).
const STALLED_CLIENT: Duration = Duration::from_secs(60);
/// A block of a store scan: its bytes and its lines' positions.
type Block = (Vec<u8>, Vec<RawLine>);
/// Buffers kept between generations.
const POOL_BLOCKS: usize = 4;
/// Generations with more lines than this are read and matched on two threads.
const PIPELINE_LINES: u64 = 10_000;
/// Listings are walked this many entries at a time.
const PAGE: usize = 256;

/// What to look for and where: a parsed, validated request.
#[derive(Debug)]
pub struct Query {
    pub matcher: Regex,
    /// The pattern has no look-around (`^`, `$`, `\b`): it may run over bytes that are
    /// not separated by `\n`.
    pub look_free: bool,
    /// `q` is a literal (not `regex=true`).
    pub literal: bool,
    pub host: Option<String>,
    pub file: FileFilter,
    pub generation: Option<String>,
    /// (since, until) in ms since the epoch, by receive time.
    pub window: Option<(u64, u64)>,
    pub limit: u64,
    pub context: usize,
    pub text: bool,
    pub deadline: Duration,
}

/// `file=`: one exact name, or a glob.
#[derive(Debug)]
pub enum FileFilter {
    Any,
    Exact(String),
    Glob(globset::GlobMatcher),
}

impl FileFilter {
    fn admits(&self, file: &str) -> bool {
        match self {
            FileFilter::Any => true,
            FileFilter::Exact(f) => f == file,
            FileFilter::Glob(g) => g.is_match(file),
        }
    }
}

const PARAMS: &[&str] = &[
    "q",
    "regex",
    "case",
    "host",
    "file",
    "generation",
    "since",
    "until",
    "limit",
    "context",
    "format",
];

impl Query {
    /// Parses and checks a request's parameters; every mistake is a 400 naming it.
    pub fn parse(
        query: Option<&str>,
        max_limit: u64,
        max_context: u64,
        deadline: Duration,
        now: SystemTime,
    ) -> Result<Query, ApiError> {
        let p = Params::parse(query, PARAMS)?;
        let decoded = p.required("q")?;
        // `q` as the bytes it encodes: a literal may hold bytes that are not UTF-8. (A name
        // written percent-encoded, `%71=`, is only found decoded.)
        let q = raw_param(query.unwrap_or(""), "q").unwrap_or_else(|| decoded.as_bytes().to_vec());
        if q.len() > MAX_PATTERN {
            return Err(ApiError::bad_request(format!(
                "parameter `q` is {} bytes; at most {MAX_PATTERN}",
                q.len()
            )));
        }
        let is_regex = p.flag("regex")?;
        let insensitive = p.one_of("case", &["sensitive", "insensitive"])? == "insensitive";
        let pattern = if is_regex {
            String::from_utf8(q).map_err(|_| {
                ApiError::bad_request(
                    "parameter `q` (a regex) must be UTF-8; write other bytes as (?-u:\\xff)",
                )
            })?
        } else {
            literal(&q)
        };
        let matcher = RegexBuilder::new(&pattern)
            .case_insensitive(insensitive)
            // `^` and `$` at line boundaries, as in grep: the pattern runs over many lines
            // at once.
            .multi_line(true)
            .size_limit(REGEX_SIZE)
            .dfa_size_limit(REGEX_DFA_SIZE)
            .build()
            .map_err(|e| {
                let msg: String = e.to_string().chars().take(600).collect();
                ApiError::bad_request(format!("parameter `q` is not a usable regex: {msg}"))
            })?;
        let look_free = regex_syntax::ParserBuilder::new()
            .utf8(false)
            .case_insensitive(insensitive)
            .multi_line(true)
            .build()
            .parse(&pattern)
            .is_ok_and(|hir| hir.properties().look_set().is_empty());
        let file = match p.optional("file") {
            None | Some("") => FileFilter::Any,
            Some(f) if f.contains(['*', '?', '[', '{']) => FileFilter::Glob(
                globset::GlobBuilder::new(f)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| {
                        ApiError::bad_request(format!(
                            "parameter `file` is not a usable glob: {}",
                            e.kind()
                        ))
                    })?
                    .compile_matcher(),
            ),
            Some(f) => FileFilter::Exact(f.to_owned()),
        };
        let since = p
            .optional("since")
            .map(|v| time("since", v, now))
            .transpose()?;
        let until = p
            .optional("until")
            .map(|v| time("until", v, now))
            .transpose()?;
        let window = match (since, until) {
            (None, None) => None,
            (s, u) => {
                let (s, u) = (s.unwrap_or(0), u.unwrap_or(u64::MAX));
                if s > u {
                    return Err(ApiError::bad_request(
                        "`since` is later than `until`: the window is empty",
                    ));
                }
                Some((s, u))
            }
        };
        let limit = p.number("limit")?.unwrap_or(1_000.min(max_limit));
        if limit == 0 {
            return Err(ApiError::bad_request(
                "parameter `limit` must be at least 1",
            ));
        }
        if limit > max_limit {
            return Err(ApiError::bad_request(format!(
                "parameter `limit` is {limit}; at most {max_limit} (search.max_limit)"
            )));
        }
        let context = p.number("context")?.unwrap_or(0);
        if context > max_context {
            return Err(ApiError::bad_request(format!(
                "parameter `context` is {context}; at most {max_context} (search.max_context)"
            )));
        }
        let text = p.one_of("format", &["ndjson", "text"])? == "text";
        Ok(Query {
            matcher,
            look_free,
            literal: !is_regex,
            host: p
                .optional("host")
                .filter(|h| !h.is_empty())
                .map(str::to_owned),
            file,
            generation: p
                .optional("generation")
                .filter(|g| !g.is_empty())
                .map(str::to_owned),
            window,
            limit,
            context: context as usize,
            text,
            deadline,
        })
    }
}

/// A regex matching exactly the bytes of `q`: UTF-8 runs escaped (so case-insensitive
/// matching still works on them), other bytes as raw byte escapes.
fn literal(q: &[u8]) -> String {
    let mut out = String::new();
    for chunk in q.utf8_chunks() {
        out.push_str(&regex::escape(chunk.valid()));
        for b in chunk.invalid() {
            out.push_str(&format!("(?-u:\\x{b:02x})"));
        }
    }
    out
}

/// The percent-decoded bytes of parameter `name` in a query string (`+` is a space).
fn raw_param(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            let v = v.replace('+', " ");
            percent_encoding::percent_decode_str(&v).collect()
        })
    })
}

/// An RFC 3339 time (`2026-11-29T10:00:00Z`) or one relative to now (`15m`, `2h`, `7d`),
/// in ms since the epoch.
fn time(name: &str, v: &str, now: SystemTime) -> Result<u64, ApiError> {
    let bad = || {
        let shown: String = v.chars().take(40).collect();
        ApiError::bad_request(format!(
            "parameter `{name}` must be an RFC 3339 time such as 2026-11-29T10:00:00Z or a \
             duration before now such as 15m, not {shown:?}"
        ))
    };
    let at = match humantime::parse_rfc3339_weak(v.trim()) {
        Ok(t) => t,
        Err(_) => {
            let d = humantime::parse_duration(v.trim()).map_err(|_| bad())?;
            now.checked_sub(d).unwrap_or(UNIX_EPOCH)
        }
    };
    Ok(at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
}

/// The route.
pub async fn search(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    app.authorize_download(&req)?;
    let settings = app.settings();
    let query = Query::parse(
        req.uri().query(),
        settings.search_max_limit,
        settings.search_max_context,
        settings.search_timeout,
        SystemTime::now(),
    )?;
    let permit = app.searches.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many searches running (search.max_searches); retry later",
        )
        .retry_after(2)
    })?;
    let (tx, body) = streamed(4);
    let store = app.store.clone();
    let (searches, scanned) = (
        app.metrics.searches.clone(),
        app.metrics.search_bytes.clone(),
    );
    let (running, stalled) = (
        app.metrics.searches_running.clone(),
        app.metrics.searches_stalled.clone(),
    );
    let handle = tokio::runtime::Handle::current();
    let text = query.text;
    running.inc();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let _running = Running(running);
        let mut scan = Scan::new(&query, &tx, &handle);
        let outcome = scan.run(&store);
        searches.inc();
        scanned.inc_by(scan.bytes);
        if scan.stalled {
            stalled.inc();
            tracing::info!("search client stopped reading; search ended");
        }
        match outcome {
            Ok(reason) => {
                if !scan.text {
                    scan.summary(reason);
                }
                if scan.flush() {
                    tx.finish();
                }
            }
            Err(Stop::Gone) => {
                tracing::debug!("search stopped: the client went away");
            }
            Err(Stop::Store(e)) => {
                // The head is sent: the failure ends the stream as aborted (never as a
                // complete-looking answer) and is logged.
                tracing::warn!(error = %e, "search failed reading the store");
            }
        }
    });
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(if text {
            "text/plain"
        } else {
            "application/x-ndjson"
        }),
    );
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}

/// Counts a search as running until it is dropped (on every way out of the scan's thread).
struct Running(prometheus_client::metrics::gauge::Gauge);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Why a scan stopped early.
#[derive(Debug)]
enum Stop {
    /// The client closed the connection (or stopped reading).
    Gone,
    Store(StoreError),
}

/// Why a completed scan did not look at everything, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncated {
    No,
    Limit,
    Time,
}

/// A block of lines to match: bytes, and where each line lies in them.
struct View<'a> {
    data: &'a [u8],
    lines: &'a [RawLine],
    /// Lines are separated by `\n` (a rendered chunk), not by the store's own bytes.
    newline_separated: bool,
}

impl View<'_> {
    fn content(&self, i: usize) -> &[u8] {
        let l = self.lines[i];
        &self.data[l.start..l.end]
    }
}

/// One line kept for context before a match.
struct Kept {
    number: u64,
    content: Vec<u8>,
    partial: bool,
}

/// One search in progress.
/// Where a scan's output goes: the response body, or (for a worker scanning a generation
/// ahead of the one being sent) its own bounded channel, read in order by the main scan.
enum Sink<'a> {
    Body(&'a StreamSender),
    Part {
        tx: std::sync::mpsc::SyncSender<Part>,
        stop: &'a AtomicBool,
        ahead: &'a Ahead,
        /// The generation's place in the batch: the one being sent never waits for `ahead`.
        index: usize,
    },
}

/// The output bytes held by the workers of one batch, and which generation is being sent.
struct Ahead {
    state: std::sync::Mutex<(usize, usize)>,
    changed: std::sync::Condvar,
}

impl Ahead {
    fn new() -> Self {
        Ahead {
            state: std::sync::Mutex::new((0, 0)),
            changed: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, usize)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until generation `index` may hold `n` more bytes: at once for the generation
    /// being sent (so the scan always progresses) or when nothing is held, otherwise while
    /// [`AHEAD_BYTES`] would be exceeded. False once the scan stops.
    fn reserve(&self, index: usize, n: usize, stop: &AtomicBool) -> bool {
        let mut s = self.lock();
        loop {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            let (held, head) = *s;
            if index <= head || held == 0 || held + n <= AHEAD_BYTES {
                s.0 += n;
                return true;
            }
            // The stop flag is set without the lock: look again now and then.
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(50))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// `n` bytes reserved earlier were forwarded.
    fn release(&self, n: usize) {
        let mut s = self.lock();
        s.0 = s.0.saturating_sub(n);
        drop(s);
        self.changed.notify_all();
    }

    /// Generation `index` is now the one being sent.
    fn advance(&self, index: usize) {
        self.lock().1 = index;
        self.changed.notify_all();
    }
}

/// What a worker sends for its generation.
enum Part {
    /// Rendered results, and where each match line ends in them (for the limit's cut).
    Out(Vec<u8>, Vec<usize>),
    /// The generation is done, and how it ended (what it read is counted apart).
    Done {
        outcome: Result<Truncated, StoreError>,
    },
}

struct Scan<'a> {
    q: &'a Query,
    sink: Sink<'a>,
    rt: &'a tokio::runtime::Handle,
    /// Where in `out` each match line ends (workers only).
    match_ends: Vec<usize>,
    text: bool,
    started: Instant,
    out: Vec<u8>,
    matches: u64,
    lines: u64,
    bytes: u64,
    skipped: u64,
    /// The last `context` lines seen before the current chunk (same generation).
    ring: VecDeque<Kept>,
    /// Lines of context still owed after the last match.
    after: usize,
    /// The highest line number already written in this generation (so context never
    /// repeats a line).
    written: Option<u64>,
    /// Block buffers reused from one generation to the next.
    pool: Vec<Block>,
    /// The client stopped reading for longer than the stall guard.
    stalled: bool,
}

/// Where one generation is: its host, file and name, for the output.
struct Place<'a> {
    host: &'a str,
    file: &'a str,
    generation: &'a str,
}

impl<'a> Scan<'a> {
    fn new(q: &'a Query, tx: &'a StreamSender, rt: &'a tokio::runtime::Handle) -> Self {
        Self::with_sink(q, Sink::Body(tx), rt, Instant::now())
    }

    fn with_sink(
        q: &'a Query,
        sink: Sink<'a>,
        rt: &'a tokio::runtime::Handle,
        started: Instant,
    ) -> Self {
        Scan {
            q,
            sink,
            rt,
            match_ends: Vec::new(),
            text: q.text,
            started,
            out: Vec::with_capacity(OUT_BYTES + 4096),
            matches: 0,
            lines: 0,
            bytes: 0,
            skipped: 0,
            ring: VecDeque::new(),
            after: 0,
            written: None,
            pool: Vec::new(),
            stalled: false,
        }
    }

    fn gone(&self) -> bool {
        match &self.sink {
            Sink::Body(tx) => tx.sender().is_closed(),
            Sink::Part { stop, .. } => stop.load(Ordering::SeqCst),
        }
    }

    fn expired(&self) -> bool {
        self.started.elapsed() >= self.q.deadline
    }

    /// Walks hosts → files → generations and scans each; returns why it stopped.
    fn run(&mut self, store: &Arc<dyn Store>) -> Result<Truncated, Stop> {
        let hosts: Vec<String> = match &self.q.host {
            Some(h) => vec![h.clone()],
            None => {
                let mut all = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let page = self
                        .rt
                        .block_on(store.hosts_page(after.as_deref(), PAGE))
                        .map_err(Stop::Store)?;
                    let done = page.len() < PAGE;
                    after = page.last().cloned();
                    all.extend(page);
                    if done || after.is_none() {
                        break;
                    }
                }
                all
            }
        };
        for host in &hosts {
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .rt
                    .block_on(store.files_page(
                        Some(host),
                        after.as_deref().map(|f| (host.as_str(), f)),
                        PAGE,
                    ))
                    .map_err(Stop::Store)?;
                let done = page.len() < PAGE;
                after = page.last().map(|f| f.file.clone());
                let targets: Vec<(&str, &GenerationInfo)> = page
                    .iter()
                    .filter(|f| self.q.file.admits(&f.file))
                    .flat_map(|f| f.generations.iter().map(move |g| (f.file.as_str(), g)))
                    .filter(|(_, g)| self.wanted(g))
                    .collect();
                let t = self.batch(store, host, &targets)?;
                if t != Truncated::No {
                    return Ok(t);
                }
                if done || after.is_none() {
                    break;
                }
            }
        }
        Ok(Truncated::No)
    }

    /// Scans generations in order. Several at once, one per core: each worker renders a
    /// generation into its own bounded channel (a worker ahead of the one being sent waits
    /// once it holds [`PART_QUEUE`] pieces), and this scan forwards them in order, cutting at
    /// the limit. A lone generation is scanned here.
    fn batch(
        &mut self,
        store: &Arc<dyn Store>,
        host: &str,
        targets: &[(&str, &GenerationInfo)],
    ) -> Result<Truncated, Stop> {
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_WORKERS)
            .min(targets.len());
        if workers <= 1 {
            for (file, g) in targets {
                let place = Place {
                    host,
                    file,
                    generation: &g.name,
                };
                let t = self.generation(store, g, &place)?;
                if t != Truncated::No {
                    return Ok(t);
                }
            }
            return Ok(Truncated::No);
        }
        let stop = AtomicBool::new(false);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut receivers = Vec::with_capacity(targets.len());
        let mut senders = Vec::with_capacity(targets.len());
        for _ in targets {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Part>(PART_QUEUE);
            senders.push(Some(tx));
            receivers.push(rx);
        }
        let senders = std::sync::Mutex::new(senders);
        let ahead = Ahead::new();
        // What every worker read, counted as it ends however it ends: when the limit cuts
        // the search, the generations being scanned never report done (the summary said
        // 0 lines scanned, issue 29.8).
        let scanned = [const { std::sync::atomic::AtomicU64::new(0) }; 3];
        let (q, rt, started) = (self.q, self.rt, self.started);
        let result = std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((file, g)) = targets.get(i) else {
                        return;
                    };
                    let Some(part) = senders
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get_mut(i)
                        .and_then(Option::take)
                    else {
                        return;
                    };
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let sink = Sink::Part {
                        tx: part.clone(),
                        stop: &stop,
                        ahead: &ahead,
                        index: i,
                    };
                    let mut w = Scan::with_sink(q, sink, rt, started);
                    let place = Place {
                        host,
                        file,
                        generation: &g.name,
                    };
                    let outcome = w.generation(store, g, &place);
                    for (total, n) in scanned.iter().zip([w.lines, w.bytes, w.skipped]) {
                        total.fetch_add(n, Ordering::SeqCst);
                    }
                    let outcome = match outcome {
                        Ok(t) => Ok(t),
                        Err(Stop::Gone) => return,
                        Err(Stop::Store(e)) => Err(e),
                    };
                    if !w.flush() {
                        return;
                    }
                    let _ = part.send(Part::Done { outcome });
                });
            }
            let result = self.merge(&receivers, &ahead);
            stop.store(true, Ordering::SeqCst);
            ahead.advance(usize::MAX);
            drop(receivers);
            result
        });
        let [lines, bytes, skipped] = scanned.map(std::sync::atomic::AtomicU64::into_inner);
        self.lines += lines;
        self.bytes += bytes;
        self.skipped += skipped;
        result
    }

    /// Forwards the workers' parts in generation order; stops at the limit, the time limit,
    /// a store error, or a gone client.
    fn merge(
        &mut self,
        receivers: &[std::sync::mpsc::Receiver<Part>],
        ahead: &Ahead,
    ) -> Result<Truncated, Stop> {
        for (i, rx) in receivers.iter().enumerate() {
            ahead.advance(i);
            loop {
                if self.gone() {
                    return Err(Stop::Gone);
                }
                let Ok(part) = rx.recv() else {
                    // A worker stopped without finishing: only when the scan is ending.
                    return Err(Stop::Gone);
                };
                match part {
                    Part::Out(data, ends) => {
                        ahead.release(data.len());
                        let left = self.q.limit - self.matches;
                        if ends.len() as u64 >= left {
                            let cut = ends[left as usize - 1];
                            self.out.extend_from_slice(&data[..cut]);
                            self.matches = self.q.limit;
                            return Ok(Truncated::Limit);
                        }
                        self.matches += ends.len() as u64;
                        self.out.extend_from_slice(&data);
                        if self.out.len() >= OUT_BYTES && !self.flush() {
                            return Err(Stop::Gone);
                        }
                    }
                    Part::Done { outcome } => {
                        match outcome.map_err(Stop::Store)? {
                            Truncated::No => break,
                            // A worker's own limit is the global one: the cut above
                            // happened first if it was reached here.
                            Truncated::Limit => break,
                            Truncated::Time => return Ok(Truncated::Time),
                        }
                    }
                }
            }
        }
        Ok(Truncated::No)
    }

    /// Whether a generation can hold a wanted line: the right name, and written within the
    /// window at all.
    fn wanted(&self, g: &GenerationInfo) -> bool {
        if self.q.generation.as_deref().is_some_and(|n| n != g.name) {
            return false;
        }
        let ms = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        match self.q.window {
            Some((since, until)) => ms(g.first_write) <= until && ms(g.last_write) >= since,
            None => true,
        }
    }

    /// Scans one generation: through the store's own scan when it has one (large blocks as
    /// stored, no copy per line), else chunk by chunk, reading the next while matching this
    /// one.
    fn generation(
        &mut self,
        store: &Arc<dyn Store>,
        g: &GenerationInfo,
        place: &Place<'_>,
    ) -> Result<Truncated, Stop> {
        let id = g.id;
        // A large generation is read on one thread while matched on this one, when matching
        // costs about as much as reading: a regex. A literal's SIMD prefilter is so much
        // faster than reading that the hand-over only costs (measured: 6.2 → 3.9 GB/s).
        let large = g.lines > PIPELINE_LINES && !self.q.literal;
        self.ring.clear();
        self.after = 0;
        self.written = None;
        let window = self.q.window;
        let mut outcome: Result<Truncated, Stop> = Ok(Truncated::No);
        let scanned =
            if large {
                self.generation_pipelined(store, id, place, &mut outcome)
            } else {
                store.scan_blocking(id, window, &mut |data, lines| match self
                    .visit(data, lines, place)
                {
                    Ok(Truncated::No) => true,
                    other => {
                        outcome = other;
                        false
                    }
                })
            };
        if let Some(result) = scanned {
            self.skipped += result.map_err(Stop::Store)?;
            return outcome;
        }
        self.generation_by_chunks(store, id, place)
    }

    /// Matches one block of the store's scan, with the bookkeeping around it.
    fn visit(
        &mut self,
        data: &[u8],
        lines: &[RawLine],
        place: &Place<'_>,
    ) -> Result<Truncated, Stop> {
        if self.gone() {
            return Err(Stop::Gone);
        }
        self.lines += lines.len() as u64;
        self.bytes += lines.iter().map(|l| (l.end - l.start) as u64).sum::<u64>();
        let view = View {
            data,
            lines,
            newline_separated: false,
        };
        match self.block(&view, place)? {
            Truncated::No if self.expired() => Ok(Truncated::Time),
            t => Ok(t),
        }
    }

    /// The store's scan on a thread of its own, handing each block over (buffers swapped,
    /// not copied) to be matched here; its buffers come back for reuse, and are kept for
    /// the next generation. Two blocks wait at most. When matching stops, the reader's next
    /// hand-over fails and its scan ends.
    fn generation_pipelined(
        &mut self,
        store: &Arc<dyn Store>,
        id: u64,
        place: &Place<'_>,
        outcome: &mut Result<Truncated, Stop>,
    ) -> Option<Result<u64, StoreError>> {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Block>(2);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Block>();
        // Buffers kept from earlier generations: no fresh 4 MiB to fault in each time.
        for b in self.pool.drain(..) {
            let _ = empty_tx.send(b);
        }
        let window = self.q.window;
        let store = store.clone();
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let scanned = store.scan_blocking(id, window, &mut |data, lines| {
                    let (mut d, mut l) = empty_rx.try_recv().unwrap_or_default();
                    std::mem::swap(data, &mut d);
                    std::mem::swap(lines, &mut l);
                    full_tx.send((d, l)).is_ok()
                });
                (scanned, empty_rx)
            });
            for (data, lines) in full_rx.iter() {
                match self.visit(&data, &lines, place) {
                    Ok(Truncated::No) => {
                        let _ = empty_tx.send((data, lines));
                    }
                    other => {
                        *outcome = other;
                        break;
                    }
                }
            }
            drop(full_rx);
            match reader.join() {
                Ok((scanned, empty_rx)) => {
                    drop(empty_tx);
                    self.pool.extend(empty_rx.try_iter().take(POOL_BLOCKS));
                    scanned
                }
                Err(_) => Some(Err(StoreError::Unavailable("search reader failed".into()))),
            }
        })
    }

    /// The scan through [`Store::search_chunk`], for backends without their own.
    fn generation_by_chunks(
        &mut self,
        store: &Arc<dyn Store>,
        id: u64,
        place: &Place<'_>,
    ) -> Result<Truncated, Stop> {
        let window = self.q.window;
        let mut chunk = self
            .rt
            .block_on(store.search_chunk(id, 0, CHUNK_BYTES, window))
            .map_err(Stop::Store)?;
        let mut lines = Vec::new();
        loop {
            if self.gone() {
                return Err(Stop::Gone);
            }
            // Read ahead: the store decodes the next chunk on its own thread meanwhile.
            let next = chunk.next.map(|from| {
                let store = store.clone();
                self.rt
                    .spawn(async move { store.search_chunk(id, from, CHUNK_BYTES, window).await })
            });
            lines.clear();
            for (i, l) in chunk.lines.iter().enumerate() {
                let end = chunk.lines.get(i + 1).map_or(chunk.data.len(), |n| n.start);
                let end = if l.partial {
                    end
                } else {
                    end.saturating_sub(1)
                };
                lines.push(RawLine {
                    number: l.number,
                    start: l.start,
                    end: end.max(l.start),
                    partial: l.partial,
                });
            }
            self.lines += lines.len() as u64;
            self.bytes += chunk.data.len() as u64;
            self.skipped += chunk.skipped;
            // A partial line is rendered without its `\n`, so the line after it would not
            // start a line for `^`, nor would it end one for `$`: then match line by line,
            // as the store's own scan does (the backends disagreed, issue 29.7).
            let newline_separated = !lines.iter().rev().skip(1).any(|l| l.partial);
            let view = View {
                data: &chunk.data,
                lines: &lines,
                newline_separated,
            };
            let t = self.block(&view, place)?;
            if t != Truncated::No {
                if let Some(n) = next {
                    n.abort();
                }
                return Ok(t);
            }
            if self.expired() {
                return Ok(Truncated::Time);
            }
            match next {
                Some(n) => {
                    chunk = self
                        .rt
                        .block_on(n)
                        .map_err(|e| Stop::Store(StoreError::Unavailable(e.to_string())))?
                        .map_err(Stop::Store)?;
                }
                None => return Ok(Truncated::No),
            }
        }
    }

    /// Matches one block of lines.
    fn block(&mut self, v: &View<'_>, place: &Place<'_>) -> Result<Truncated, Stop> {
        let n = v.lines.len();
        // The pattern runs over the whole block when nothing in it depends on what
        // surrounds a line (`^`, `$`, `\b`) or the lines are separated by `\n` as in a file;
        // otherwise line by line.
        let whole = v.newline_separated || self.q.look_free;
        let mut i = 0usize;
        while i < n {
            if self.after > 0 || !whole {
                // Owed context, or line-by-line matching.
                if self.q.matcher.is_match(v.content(i)) {
                    self.hit(v, i, place)?;
                    if self.matches >= self.q.limit {
                        return Ok(Truncated::Limit);
                    }
                } else if self.after > 0 {
                    let l = v.lines[i];
                    self.emit(place, l.number, v.content(i), l.partial, true)?;
                    self.after -= 1;
                }
                i += 1;
                continue;
            }
            let Some(m) = self.q.matcher.find_at(v.data, v.lines[i].start) else {
                break;
            };
            // The line the match starts in (or the next one, if it starts between lines);
            // the match counts only within its line.
            let at = i + v.lines[i..].partition_point(|l| l.end < m.start());
            if at >= n {
                break;
            }
            if self.q.matcher.is_match(v.content(at)) {
                self.hit(v, at, place)?;
                if self.matches >= self.q.limit {
                    return Ok(Truncated::Limit);
                }
            }
            i = at + 1;
        }
        // Keep the block's last lines for the context of a match early in the next one.
        if self.q.context > 0 {
            for j in n.saturating_sub(self.q.context)..n {
                let l = v.lines[j];
                self.ring.push_back(Kept {
                    number: l.number,
                    content: v.content(j).to_vec(),
                    partial: l.partial,
                });
                if self.ring.len() > self.q.context {
                    self.ring.pop_front();
                }
            }
        }
        Ok(Truncated::No)
    }

    /// Writes a match at line `i` of `v`, with the context before it.
    fn hit(&mut self, v: &View<'_>, i: usize, place: &Place<'_>) -> Result<(), Stop> {
        let n = self.q.context;
        let number = v.lines[i].number;
        if n > 0 {
            // Up to n lines before: from this block, then from the ring.
            let here = i.saturating_sub(n)..i;
            let need_ring = n - here.len();
            let from_ring: Vec<(u64, Vec<u8>, bool)> = self
                .ring
                .iter()
                .rev()
                .take(need_ring)
                .map(|k| (k.number, k.content.clone(), k.partial))
                .collect();
            for (num, text, partial) in from_ring.into_iter().rev() {
                if self.written.is_none_or(|w| num > w) && num < number {
                    self.emit(place, num, &text, partial, true)?;
                }
            }
            for j in here {
                let l = v.lines[j];
                if self.written.is_none_or(|w| l.number > w) {
                    self.emit(place, l.number, v.content(j), l.partial, true)?;
                }
            }
        }
        self.matches += 1;
        self.emit(place, number, v.content(i), v.lines[i].partial, false)?;
        self.after = n;
        Ok(())
    }

    /// Renders one result line (a match, or context).
    fn emit(
        &mut self,
        place: &Place<'_>,
        number: u64,
        content: &[u8],
        partial: bool,
        context: bool,
    ) -> Result<(), Stop> {
        self.written = Some(number);
        if self.text {
            // grep's form: `host:file:line:content`, context lines with `-`.
            let sep = if context { '-' } else { ':' };
            self.out.extend_from_slice(
                format!("{}:{}{sep}{number}{sep}", place.host, place.file).as_bytes(),
            );
            self.out.extend_from_slice(content);
            self.out.push(b'\n');
        } else {
            use base64::Engine;
            let mut v = serde_json::json!({
                "host": place.host,
                "file": place.file,
                "generation": place.generation,
                "line": number,
            });
            match std::str::from_utf8(content) {
                Ok(s) => v["content"] = s.into(),
                Err(_) => {
                    v["content_base64"] = base64::engine::general_purpose::STANDARD
                        .encode(content)
                        .into()
                }
            }
            if partial {
                v["partial"] = true.into();
            }
            if context {
                v["context"] = true.into();
            }
            self.out.extend_from_slice(v.to_string().as_bytes());
            self.out.push(b'\n');
        }
        if !context {
            self.match_ends.push(self.out.len());
        }
        if self.out.len() >= OUT_BYTES && !self.flush() {
            return Err(Stop::Gone);
        }
        Ok(())
    }

    /// The last NDJSON object: what was scanned and whether the answer is complete.
    fn summary(&mut self, truncated: Truncated) {
        let v = serde_json::json!({
            "summary": {
                "matches": self.matches,
                "lines_scanned": self.lines,
                "bytes_scanned": self.bytes,
                "buckets_skipped": self.skipped,
                "truncated": truncated != Truncated::No,
                "reason": match truncated {
                    Truncated::No => serde_json::Value::Null,
                    Truncated::Limit => "limit".into(),
                    Truncated::Time => "time limit (search.timeout)".into(),
                },
                "elapsed_ms": self.started.elapsed().as_millis() as u64,
            }
        });
        self.out.extend_from_slice(v.to_string().as_bytes());
        self.out.push(b'\n');
    }

    /// Sends what is buffered; false once the client (or the main scan) has gone.
    fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let data = std::mem::take(&mut self.out);
        self.out.reserve(OUT_BYTES + 4096);
        match &self.sink {
            Sink::Body(tx) => {
                let wait = self.q.deadline.min(STALLED_CLIENT);
                match self
                    .rt
                    .block_on(tx.sender().send_timeout(Bytes::from(data), wait))
                {
                    Ok(()) => true,
                    Err(tokio::sync::mpsc::error::SendTimeoutError::Timeout(_)) => {
                        self.stalled = true;
                        false
                    }
                    Err(_) => false,
                }
            }
            Sink::Part {
                tx,
                stop,
                ahead,
                index,
            } => {
                ahead.reserve(*index, data.len(), stop)
                    && tx
                        .send(Part::Out(data, std::mem::take(&mut self.match_ends)))
                        .is_ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<Query, String> {
        Query::parse(
            Some(q),
            100,
            5,
            Duration::from_secs(1),
            UNIX_EPOCH + Duration::from_secs(1_000_000),
        )
        .map_err(|e| e.message)
    }

    #[test]
    fn bad_queries_name_what_is_wrong() {
        for (q, want) in [
            ("", "missing parameter `q`"),
            ("q=", "must not be empty"),
            ("q=a&limit=0", "at least 1"),
            ("q=a&limit=101", "at most 100"),
            ("q=a&context=6", "at most 5"),
            ("q=(&regex=true", "not a usable regex"),
            ("q=a&since=yesterday", "`since`"),
            ("q=a&since=1m&until=2m", "window is empty"),
            ("q=a&colour=red", "unknown parameter `colour`"),
            ("q=a&case=upper", "`case`"),
            ("q=a&format=xml", "`format`"),
            ("q=a&file=%5B", "glob"),
        ] {
            let e = parse(q).expect_err(q);
            assert!(e.contains(want), "{q}: {e}");
        }
        let e = parse(&format!("q={}&regex=true", "a{1000}{1000}")).expect_err("huge");
        assert!(e.contains("not a usable regex"), "{e}");
    }

    #[test]
    fn literals_are_literal_and_times_are_absolute_or_relative() {
        let q = parse("q=a.b%5B&since=10s&until=2026-11-29T00:00:00Z").expect("valid");
        assert!(q.matcher.is_match(b"xa.b[y"));
        assert!(!q.matcher.is_match(b"axb["));
        let (since, until) = q.window.expect("window");
        assert_eq!(since, (1_000_000 - 10) * 1000);
        assert_eq!(until, 1_795_910_400_000);
        let q = parse("q=ERROR&case=insensitive").expect("valid");
        assert!(q.matcher.is_match(b"an error here"));
        let q = parse("q=%28%3F-u%3A%5Cxff%29&regex=true").expect("bytes");
        assert!(q.matcher.is_match(b"\xff"));
        let q = parse("q=a%FFb").expect("a literal with a byte that is not UTF-8");
        assert!(q.matcher.is_match(b"xa\xffby") && !q.matcher.is_match(b"ab"));
        let q = parse("q=%5EERROR&regex=true").expect("anchored");
        assert!(q.matcher.is_match(b"x\nERROR at line start"));
        assert!(parse("q=%FF&regex=true").is_err());
        let q = parse("%71=abc").expect("an encoded name");
        assert!(q.matcher.is_match(b"xabc") && !q.matcher.is_match(b"xyz"));
    }

    /// The sled store without its own scan: what a backend that only has `search_chunk`
    /// looks like to the search.
    struct ChunksOnly(Arc<crate::store::SledStore>);

    impl Store for ChunksOnly {
        fn write<'a>(
            &'a self,
            b: &'a [logship_wire::FileBatch<'a>],
        ) -> crate::store::BoxFuture<'a, Result<crate::store::WriteStats, StoreError>> {
            self.0.write(b)
        }
        fn hosts_page<'a>(
            &'a self,
            after: Option<&'a str>,
            limit: usize,
        ) -> crate::store::BoxFuture<'a, Result<Vec<String>, StoreError>> {
            self.0.hosts_page(after, limit)
        }
        fn files_page<'a>(
            &'a self,
            host: Option<&'a str>,
            after: Option<(&'a str, &'a str)>,
            limit: usize,
        ) -> crate::store::BoxFuture<'a, Result<Vec<crate::store::FileInfo>, StoreError>> {
            self.0.files_page(host, after, limit)
        }
        fn generations<'a>(
            &'a self,
            host: &'a str,
            file: &'a str,
        ) -> crate::store::BoxFuture<'a, Result<Vec<GenerationInfo>, StoreError>> {
            self.0.generations(host, file)
        }
        fn read_chunk(
            &self,
            id: u64,
            from: u64,
            to: u64,
            max: usize,
            contiguous: bool,
            numbered: bool,
        ) -> crate::store::BoxFuture<'_, Result<crate::store::Chunk, StoreError>> {
            self.0.read_chunk(id, from, to, max, contiguous, numbered)
        }
        fn search_chunk(
            &self,
            id: u64,
            from: u64,
            max: usize,
            window: Option<(u64, u64)>,
        ) -> crate::store::BoxFuture<'_, Result<crate::store::Chunk, StoreError>> {
            self.0.search_chunk(id, from, max, window)
        }
        fn size_on_disk(&self) -> u64 {
            self.0.size_on_disk()
        }
        fn flush(&self) -> crate::store::BoxFuture<'_, Result<(), StoreError>> {
            self.0.flush()
        }
        fn sweep(
            &self,
            policy: crate::store::RetentionPolicy,
            now: SystemTime,
        ) -> crate::store::BoxFuture<'_, Result<crate::store::SweepReport, StoreError>> {
            self.0.sweep(policy, now)
        }
    }

    async fn run_search(store: Arc<dyn Store>, query: &str) -> Vec<u8> {
        use http_body_util::BodyExt;
        let q = Query::parse(
            Some(query),
            100_000,
            20,
            Duration::from_secs(30),
            SystemTime::now(),
        )
        .expect("query");
        let (tx, body) = streamed(4);
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut scan = Scan::new(&q, &tx, &handle);
            let t = scan.run(&store).expect("scan");
            scan.summary(t);
            if scan.flush() {
                tx.finish();
            }
        });
        let all = body.collect().await.expect("body").to_bytes().to_vec();
        // The summary's timing differs from run to run; everything else must not.
        let cut = all[..all.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let mut out = all[..cut].to_vec();
        let summary: serde_json::Value = serde_json::from_slice(&all[cut..]).expect("summary");
        out.extend_from_slice(summary["summary"]["matches"].to_string().as_bytes());
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_chunk_path_finds_what_the_store_scan_finds() {
        use std::borrow::Cow;
        let dir = tempfile::tempdir().expect("tempdir");
        let sled =
            Arc::new(crate::store::SledStore::open(dir.path(), &Default::default()).expect("open"));
        let mut rng = fastrand::Rng::with_seed(3);
        for f in 0..3 {
            // 30,000 lines: several 256 KiB chunks and several scan blocks.
            let lines: Vec<logship_wire::Line<'static>> = (0..30_000u64)
                .map(|n| {
                    let word = ["alpha", "beta", "ERROR", "gamma \u{e9}"][rng.usize(..4)];
                    logship_wire::Line {
                        number: n,
                        content: Cow::Owned(format!("{word} {n} {}", rng.u32(..1000)).into_bytes()),
                        partial: false,
                    }
                })
                .collect();
            let fb = logship_wire::FileBatch {
                host: Cow::Borrowed("h"),
                file: Cow::Owned(format!("/f{f}.log")),
                generation: Cow::Borrowed("g"),
                lines,
            };
            sled.write(std::slice::from_ref(&fb)).await.expect("write");
        }
        let chunks: Arc<dyn Store> = Arc::new(ChunksOnly(sled.clone()));
        let scan: Arc<dyn Store> = sled;
        for query in [
            "q=ERROR%2012",
            "q=error&case=insensitive&context=2&limit=5000",
            "q=%5Egamma.*%209%24&regex=true&context=1",
            "q=beta%20(1%7C2)7&regex=true",
            "q=alpha&limit=7",
        ] {
            let a = run_search(scan.clone(), query).await;
            let b = run_search(chunks.clone(), query).await;
            assert!(a.len() > 10, "{query}: found nothing");
            assert!(a == b, "{query}: the two paths differ");
        }
    }
}
