//! The aggregator: receives batches of log lines over HTTP, stores them durably and
//! idempotently, and serves them back byte-identical.
//!
//! - [`busy`]: CPU-heavy steps offloaded from the workers, and how long a request kept one;
//! - [`config`]: the TOML/env/flag configuration and its validated [`Settings`](config::Settings);
//! - [`server`]: the accept loop, connection cap, graceful shutdown;
//! - [`connection`]: one connection's state, idle reclaim at the cap, JSON answers for what
//!   hyper rejects before routing;
//! - [`http`]: routes — ingest, download, listings, metrics — and their error answers;
//! - [`store`]: the `Store` trait and its sled implementation (bucketed lines, group commit);
//! - [`metrics`]: the Prometheus registry;
//! - [`reload`]: SIGHUP re-reads the configuration and swaps in what can change live.

pub mod busy;
pub mod config;
pub mod connection;
pub mod http;
pub mod metrics;
pub mod reload;
pub mod server;
pub mod tls;

/// The storage layer, its own crate (`store/`): the trait, the sled backend.
pub use logship_store as store;

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use hyper::header::AUTHORIZATION;
use hyper::{Request, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

use config::Settings;
use http::error::ApiError;
use logship_common::config::Secret;
use metrics::Metrics;
use store::Store;

type HostLimiter = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// A per-host lines/s limiter and its rate.
type Limiter = Arc<(HostLimiter, NonZeroU32)>;

/// State shared by every request.
pub struct App {
    /// The settings in force; SIGHUP swaps in a reloaded copy (see [`reload`]).
    settings: std::sync::RwLock<Arc<Settings>>,
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    /// Per-host lines/s limit; `None` when unlimited. Rebuilt when a reload changes the rate.
    limiter: std::sync::RwLock<Option<Limiter>>,
    /// Tells followers which file just received lines (a hash of host and file), so they
    /// wake on ingest instead of polling the store.
    written: broadcast::Sender<u64>,
    /// Flips to true at shutdown so long-lived responses end.
    stopping: watch::Sender<bool>,
    /// Caps concurrent `follow=true` downloads (503 past the cap).
    pub followers: Arc<tokio::sync::Semaphore>,
    /// Caps concurrent plain downloads (503 past the cap).
    pub downloads: Arc<tokio::sync::Semaphore>,
    /// Caps concurrent searches (503 past the cap).
    pub searches: Arc<tokio::sync::Semaphore>,
    /// The memory budget of requests being read, decompressed and decoded, in KiB permits
    /// (`limits.ingest_memory`).
    pub ingest_memory: Arc<tokio::sync::Semaphore>,
}

impl App {
    pub fn new(settings: Settings, store: Arc<dyn Store>) -> Arc<Self> {
        let limiter = limiter_for(settings.per_host_lines_per_sec);
        let mut metrics = Metrics::new();
        metrics.register_store(&*store);
        Arc::new(App {
            store,
            metrics,
            limiter: std::sync::RwLock::new(limiter),
            written: broadcast::channel(1024).0,
            stopping: watch::channel(false).0,
            followers: Arc::new(tokio::sync::Semaphore::new(settings.max_followers)),
            downloads: Arc::new(tokio::sync::Semaphore::new(settings.max_downloads)),
            searches: Arc::new(tokio::sync::Semaphore::new(settings.max_searches)),
            ingest_memory: Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(settings.ingest_memory / 1024).unwrap_or(usize::MAX >> 4),
            )),
            settings: std::sync::RwLock::new(Arc::new(settings)),
        })
    }

    /// Replaces the settings in force (a reload).
    pub fn set_settings(&self, settings: Settings) {
        *self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(settings);
    }

    /// Replaces the per-host rate limiter (a reload changed the rate).
    pub fn set_rate_limit(&self, lines_per_sec: u32) {
        *self
            .limiter
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = limiter_for(lines_per_sec);
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Checks the bearer token against `tokens`; an empty list means open access.
    ///
    /// The scheme is case-insensitive (RFC 7235), two `Authorization` headers are a 400 (which
    /// one would count is ambiguous), and every configured token is compared in constant time
    /// so the answer's timing says nothing about how much of a guess was right.
    pub fn authorize<B>(&self, req: &Request<B>, tokens: &[Secret]) -> Result<(), ApiError> {
        if tokens.is_empty() {
            return Ok(());
        }
        let mut values = req.headers().get_all(AUTHORIZATION).iter();
        let (first, second) = (values.next(), values.next());
        if second.is_some() {
            return Err(ApiError::bad_request(
                "more than one Authorization header; send exactly one",
            ));
        }
        let missing = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing bearer token (Authorization: Bearer …)",
            )
        };
        let value = first.ok_or_else(missing)?.as_bytes();
        let given = match value.iter().position(|&b| b == b' ') {
            Some(at) if value[..at].eq_ignore_ascii_case(b"bearer") => value[at + 1..].trim_ascii(),
            _ => return Err(missing()),
        };
        if token_matches(tokens, given) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bearer token not accepted",
            ))
        }
    }

    /// As [`authorize`](Self::authorize) for downloads, which also accept the read token
    /// from the `logship_read_token` cookie the web page sets (same-site, path
    /// `/store/log`), so its download link can be a plain link the browser streams to disk.
    pub fn authorize_download<B>(&self, req: &Request<B>) -> Result<(), ApiError> {
        let settings = self.settings();
        let tokens = &settings.read_tokens;
        if tokens.is_empty() || req.headers().contains_key(AUTHORIZATION) {
            return self.authorize(req, tokens);
        }
        let from_cookie = req
            .headers()
            .get_all(hyper::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix("logship_read_token="))
            .find(|t| !t.is_empty());
        let Some(given) = from_cookie else {
            return self.authorize(req, tokens);
        };
        let given = form_urlencoded::parse(format!("t={given}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if token_matches(tokens, given.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "read token (cookie) not accepted",
            ))
        }
    }

    /// Applies the per-host rate limit to a request's lines.
    pub fn check_rate(&self, batches: &[logship_wire::FileBatch<'_>]) -> Result<(), ApiError> {
        let current = self
            .limiter
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(current) = current else {
            return Ok(());
        };
        let (limiter, burst) = &*current;
        for (host, lines) in http::ingest::lines_per_host(batches) {
            // A batch larger than one second's quota waits for a full bucket instead of
            // being refused forever.
            let n = lines.min(*burst);
            let verdict = match limiter.check_key_n(&host.to_owned(), n) {
                Ok(v) => v,
                Err(_) => Ok(()),
            };
            if let Err(not_until) = verdict {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("host {host:?} is over its limit of {burst} lines/s"),
                )
                .retry_after(wait.as_secs_f64().ceil() as u64));
            }
        }
        Ok(())
    }

    /// Wakes followers of `host`/`file`.
    pub fn notify_written(&self, host: &str, file: &str) {
        let _ = self.written.send(file_hash(host, file));
    }

    /// Subscribes to ingest events.
    pub fn subscribe_written(&self) -> broadcast::Receiver<u64> {
        self.written.subscribe()
    }

    /// A receiver that turns true when the server begins to stop.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    fn begin_shutdown(&self) {
        let _ = self.stopping.send(true);
    }
}

/// Whether `given` is one of `tokens`, comparing every token in constant time so the
/// answer's timing says nothing about how much of a guess was right.
fn token_matches(tokens: &[Secret], given: &[u8]) -> bool {
    let mut matched = subtle::Choice::from(0u8);
    for t in tokens {
        matched |= subtle::ConstantTimeEq::ct_eq(t.expose().as_bytes(), given);
    }
    bool::from(matched)
}

/// A per-host limiter for `rate` lines/s, or none for 0.
fn limiter_for(rate: u32) -> Option<Limiter> {
    NonZeroU32::new(rate).map(|rate| Arc::new((RateLimiter::keyed(Quota::per_second(rate)), rate)))
}

/// A stable hash of a host and file, the key of ingest events.
pub fn file_hash(host: &str, file: &str) -> u64 {
    // xxh3 rather than a byte-at-a-time loop: a request of 1,000 files with 2 KB names
    // hashes 2 MB after its write, on a runtime worker.
    let h = xxhash_rust::xxh3::xxh3_64(host.as_bytes());
    xxhash_rust::xxh3::xxh3_64_with_seed(file.as_bytes(), h)
}

/// Runs the store's sweep (retention, compaction) every `sweep_interval` while the app lives.
async fn sweep_periodically(app: std::sync::Weak<App>) {
    let interval = match app.upgrade() {
        Some(a) => a.settings().sweep_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clock = store::clock::RetentionClock::default();
    clock.read();
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        let started = std::time::Instant::now();
        let reading = clock.read();
        if let Some((forward, by)) = reading.jump {
            app.metrics.clock_jumps.inc();
            tracing::error!(
                direction = if forward { "forward" } else { "backward" },
                by = %humantime::format_duration(std::time::Duration::from_secs(by.as_secs())),
                retention_clock_behind = %humantime::format_duration(std::time::Duration::from_secs(reading.behind.as_secs())),
                "the wall clock jumped; retention keeps measuring age with the monotonic clock, so nothing is dropped for the jump"
            );
        }
        app.metrics
            .retention_clock_behind
            .set(reading.behind.as_secs_f64());
        app.metrics.sweeps.inc();
        match app.store.sweep(app.settings().retention, reading.now).await {
            Ok(r) => {
                let m = &app.metrics;
                m.generations_dropped.inc_by(r.generations_dropped);
                m.segments_compacted.inc_by(r.segments_compacted);
                m.bytes_reclaimed.inc_by(r.bytes_reclaimed);
                m.sweep_seconds.set(started.elapsed().as_secs_f64());
                if r != store::SweepReport::default() {
                    tracing::info!(
                        dropped = r.generations_dropped,
                        compacted = r.segments_compacted,
                        reclaimed_bytes = r.bytes_reclaimed,
                        took = ?started.elapsed(),
                        "sweep done"
                    );
                }
            }
            Err(e) => {
                app.metrics.sweep_failures.inc();
                tracing::warn!(error = %e, "sweep failed; retrying at the next interval");
            }
        }
    }
}

/// Runs the aggregator on `listener` until `shutdown` resolves; flushes the store last.
pub async fn run(
    settings: Settings,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    reload_config: impl Fn() -> Result<Settings, config::ConfigError> + Send + 'static,
) -> anyhow::Result<()> {
    let app = App::new(settings, store.clone());
    {
        let weak = Arc::downgrade(&app);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(app) = weak.upgrade() else { return };
                let current = app
                    .limiter
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                if let Some(l) = current {
                    l.0.retain_recent();
                }
            }
        });
    }
    if app.settings().role.queries() {
        // Writes through other aggregators sharing the store wake followers here too.
        let written = app.written.clone();
        store.watch_writes(Arc::new(move |host: &str, file: &str| {
            let _ = written.send(file_hash(host, file));
        }));
    }
    reload::on_sighup(Arc::downgrade(&app), reload_config);
    tokio::spawn(sweep_periodically(Arc::downgrade(&app)));
    server::serve(app, listener, shutdown).await;
    store.flush().await?;
    tracing::info!("store flushed; bye");
    Ok(())
}
