//! The state every request shares ([`App`]): settings (swapped on reload), the store,
//! metrics, the per-host rate limiter, bearer-token checks, ingest events for followers, the
//! caps on concurrent downloads, follows and searches, and the ingest memory budget.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use hyper::header::AUTHORIZATION;
use hyper::{Request, StatusCode};
use tokio::sync::{broadcast, watch};

use crate::config::Settings;
use crate::http;
use crate::http::error::ApiError;
use crate::metrics::Metrics;
use logship_common::config::Secret;
use logship_store::Store;

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
    pub(crate) written: broadcast::Sender<u64>,
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
    /// Line numbers and resend windows of Loki and OTLP streams.
    pub push_streams: http::push::streams::Streams,
    /// Refused requests (a wrong token) are logged once a minute per client address.
    pub refusals: logship_common::log_limit::LogLimit<std::net::IpAddr>,
}

impl App {
    pub fn new(settings: Settings, store: Arc<dyn Store>) -> Arc<Self> {
        let limiter = limiter_for(settings.per_host_lines_per_sec);
        let mut metrics = Metrics::new();
        metrics.register_store(&*store);
        metrics
            .reload
            .config_info
            .in_force(None, &settings.fingerprint.hash());
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
            refusals: Default::default(),
            push_streams: Default::default(),
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

    pub(crate) fn begin_shutdown(&self) {
        let _ = self.stopping.send(true);
    }
}

impl App {
    /// Whether `given` is one of `tokens` (a credential that came some other way than a
    /// bearer header, e.g. basic auth's password), in constant time.
    pub fn token_accepted(tokens: &[Secret], given: &[u8]) -> bool {
        token_matches(tokens, given)
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

/// Forgets, every minute, the rate limiter's state of hosts not heard from lately, so a
/// stream of new host names cannot grow it without bound.
pub(crate) async fn forget_quiet_hosts(app: std::sync::Weak<App>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        let current = app
            .limiter
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(l) = current {
            l.0.retain_recent();
        }
    }
}
