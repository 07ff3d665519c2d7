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

mod matcher;
mod order;
mod query;
mod read;
mod render;
mod scan;

use matcher::{Kept, View};
pub use order::{Order, Ranked};
pub use query::{look_free, LineFilter, NameFilter, Query};
use scan::{Part, Scan, Sink};

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
    let permit = permit(app)?;
    let text = query.text;
    let body = start(app, query, permit);
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

/// A slot among `search.max_searches`, or 503.
pub fn permit(app: &App) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    app.searches.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many searches running (search.max_searches); retry later",
        )
        .retry_after(2)
    })
}

/// Starts `query` on a blocking thread holding `permit`; its output (NDJSON or text, then
/// the summary) streams into the returned body, which ends as aborted if the store fails.
pub fn start(app: &App, query: Query, permit: tokio::sync::OwnedSemaphorePermit) -> Body {
    let (tx, body) = streamed(4);
    let store = app.store.clone();
    let (searches, scanned) = (
        app.metrics.search.searches.clone(),
        app.metrics.search.search_bytes.clone(),
    );
    let (running, stalled) = (
        app.metrics.search.searches_running.clone(),
        app.metrics.search.searches_stalled.clone(),
    );
    let handle = tokio::runtime::Handle::current();
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
                tracing::warn!(error = %e.report(), "search failed reading the store");
            }
        }
    });
    body
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
    /// Ordered results: more matches than fit in [`order::KEPT_BYTES`].
    Memory,
}

/// Where one generation is: its host, file and name, for the output.
pub(super) struct Place<'a> {
    pub(super) host: &'a str,
    pub(super) file: &'a str,
    pub(super) generation: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
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
                        ts: None,
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
        // Ordered by time over three files (scanned by several workers): every match is
        // counted, and the kept ones are those of the last file written, newest first.
        let count = |out: &[u8]| -> u64 {
            let text = String::from_utf8_lossy(out);
            let last = text.rsplit('\n').next().unwrap_or("");
            last.parse().expect("the match count closes the output")
        };
        let all = run_search(scan.clone(), "q=alpha&limit=100000").await;
        let ranked = run_search(scan.clone(), "q=alpha&order=newest&limit=7").await;
        assert_eq!(
            count(&ranked),
            count(&all),
            "matches counted in order=newest"
        );
        let text = String::from_utf8_lossy(&ranked);
        let files: Vec<&str> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["file"].as_str().map(str::to_owned))
            .map(|f| if f == "/f2.log" { "last" } else { "earlier" })
            .collect();
        assert_eq!(files, vec!["last"; 7], "{text}");
    }
}
