//! The agent's Prometheus metrics, served at `metrics_listen` when configured.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A file's series; with several sinks, each sink's (`sink="…"`): each sink reads and
/// acknowledges a file at its own pace.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct FileLabel {
    pub sink: Option<Arc<str>>,
    pub file: String,
}

impl prometheus_client::encoding::EncodeLabelSet for FileLabel {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        if let Some(sink) = &self.sink {
            ("sink", sink.as_ref()).encode(encoder.encode_label())?;
        }
        ("file", self.file.as_str()).encode(encoder.encode_label())
    }
}

pub use crate::sink::endpoint_metrics::{EndpointLabel, EndpointMetrics, EndpointOutcome};

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    lines_read: Family<FileLabel, Counter>,
    bytes_read: Family<FileLabel, Counter>,
    lines_acked: Family<FileLabel, Counter>,
    bytes_acked: Family<FileLabel, Counter>,
    /// Bytes of each file not yet acknowledged.
    unshipped: Family<FileLabel, Gauge>,
    /// What `unshipped` and `oldest_unacked` are computed from (every sink's files).
    lag: Arc<crate::lag::Lag>,
    /// The sink whose pipelines report here, when there are several (see [`Metrics::for_sink`]).
    sink: Option<Arc<str>>,
    /// How long the oldest line read but not acknowledged has waited; set at each scrape.
    oldest_unacked: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub retries: Counter,
    pub dead_letters: Counter,
    /// Files waiting because a refused batch cannot be kept yet.
    pub dead_letters_waiting: Gauge,
    pub lines_truncated: Counter,
    pub truncations: Counter,
    pub files_open: Gauge,
    pub files_tracked: Gauge,
    /// Files found but not tailed yet: `limits.max_tracked_files` files are.
    pub files_waiting: Gauge,
    /// Files on a network or user-space filesystem, each read on a thread of its own.
    pub files_on_own_thread: Gauge,
    /// Checkpoints removed because their file was gone for `forget_after`.
    pub checkpoints_forgotten: Counter,
    pub deleted_held: Gauge,
    /// When checkpoints were last saved (Unix time).
    pub checkpoint_time: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub buffered_bytes: Gauge,
    /// Pipelines alive per file label: a file's series go when its last pipeline ends (a
    /// rotated file's old pipeline may end after the new one started).
    live: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    /// Files matched but not shipped, by reason: `name` (one the server cannot take),
    /// `symlink` (out of the source's directories), `permission` (cannot be opened).
    pub files_refused: Family<ReasonLabel, Counter>,
    /// Files whose delivery waits on an endpoint that refuses for a non-batch reason.
    pub parked: Gauge,
    pub endpoints: EndpointMetrics,
    /// Configuration reloads applied and refused (SIGHUP).
    pub reloads: Counter,
    pub reload_failures: Counter,
    /// 1 for the hash of the configuration in force.
    pub config_info: logship_common::config_info::ConfigInfo,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("agent");
        let m = Metrics {
            lines_read: Family::default(),
            bytes_read: Family::default(),
            lines_acked: Family::default(),
            bytes_acked: Family::default(),
            unshipped: Family::default(),
            lag: Arc::default(),
            sink: None,
            oldest_unacked: Gauge::default(),
            retries: Counter::default(),
            dead_letters: Counter::default(),
            dead_letters_waiting: Gauge::default(),
            lines_truncated: Counter::default(),
            truncations: Counter::default(),
            files_open: Gauge::default(),
            files_tracked: Gauge::default(),
            files_waiting: Gauge::default(),
            files_on_own_thread: Gauge::default(),
            checkpoints_forgotten: Counter::default(),
            deleted_held: Gauge::default(),
            checkpoint_time: Gauge::default(),
            buffered_bytes: Gauge::default(),
            live: Arc::default(),
            parked: Gauge::default(),
            files_refused: Family::default(),
            endpoints: EndpointMetrics::default(),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
            config_info: Default::default(),
            registry: Registry::default(),
        };
        r.register(
            "config_reloads",
            "Configuration reloads applied (SIGHUP)",
            m.reloads.clone(),
        );
        r.register(
            "config_reload_failures",
            "Configuration reloads refused (the running configuration stayed)",
            m.reload_failures.clone(),
        );
        r.register(
            "config_info",
            "1 for the hash of the configuration in force (agents with the same hash run the same configuration)",
            m.config_info.family.clone(),
        );
        r.register(
            "endpoint_requests",
            "Requests to each aggregator endpoint, by outcome",
            m.endpoints.requests.clone(),
        );
        r.register(
            "endpoint_last_ack_timestamp_seconds",
            "When each aggregator endpoint last acknowledged a batch, as a Unix time",
            m.endpoints.last_ack.clone(),
        );
        r.register(
            "joined_requests",
            "Multi-file requests sent to the aggregator (each carries several files' batches)",
            m.endpoints.joined_requests.clone(),
        );
        r.register(
            "joined_batches",
            "File batches sent inside multi-file requests (÷ agent_joined_requests_total: files per request)",
            m.endpoints.joined_batches.clone(),
        );
        r.register(
            "endpoint_up",
            "Whether each aggregator endpoint is taking batches (0 while skipped after a failure)",
            m.endpoints.up.clone(),
        );
        r.register(
            "lines_read",
            "Complete lines read, per file",
            m.lines_read.clone(),
        );
        r.register("bytes_read", "Bytes read, per file", m.bytes_read.clone());
        r.register(
            "lines_acked",
            "Lines acknowledged by the sink, per file",
            m.lines_acked.clone(),
        );
        r.register(
            "bytes_acked",
            "Line bytes acknowledged by the sink, per file",
            m.bytes_acked.clone(),
        );
        r.register(
            "unshipped_bytes",
            "Bytes of the file not yet acknowledged",
            m.unshipped.clone(),
        );
        r.register(
            "retries",
            "Failed attempts that will be retried",
            m.retries.clone(),
        );
        r.register(
            "dead_letter_batches",
            "Batches the sink refused, written to the dead-letter directory",
            m.dead_letters.clone(),
        );
        r.register(
            "dead_letter_waiting_files",
            "Files waiting because a refused batch cannot be kept in the dead-letter directory (disk full, or max_dead_letter_bytes reached)",
            m.dead_letters_waiting.clone(),
        );
        r.register(
            "lines_truncated",
            "Lines cut to max_line_bytes",
            m.lines_truncated.clone(),
        );
        r.register(
            "truncations",
            "Files found truncated (new generation)",
            m.truncations.clone(),
        );
        r.register(
            "files_open",
            "Log file descriptors held",
            m.files_open.clone(),
        );
        r.register(
            "files_tracked",
            "Files being tailed",
            m.files_tracked.clone(),
        );
        r.register(
            "files_waiting",
            "Files found but waiting to be tailed: limits.max_tracked_files are",
            m.files_waiting.clone(),
        );
        r.register(
            "files_on_reader_threads",
            "Files on a network or user-space filesystem (NFS, SMB, FUSE...), each read on a thread of its own",
            m.files_on_own_thread.clone(),
        );
        r.register(
            "checkpoints_forgotten",
            "Checkpoints removed because their file was gone for forget_after",
            m.checkpoints_forgotten.clone(),
        );
        r.register(
            "deleted_files_held",
            "Files rotated away or deleted, still being drained",
            m.deleted_held.clone(),
        );
        r.register(
            "oldest_unacked_age_seconds",
            "How long the oldest line read but not acknowledged by the sink has waited (0 when none waits)",
            m.oldest_unacked.clone(),
        );
        r.register(
            "checkpoint_timestamp_seconds",
            "When checkpoints were last saved, as a Unix time (alert on time() minus it)",
            m.checkpoint_time.clone(),
        );
        r.register(
            "buffered_bytes",
            "Bytes of batches waiting or in flight",
            m.buffered_bytes.clone(),
        );
        r.register(
            "parked_files",
            "Files waiting because the sink refuses for a reason that is not the batch's (wrong token or URL)",
            m.parked.clone(),
        );
        r.register(
            "files_refused",
            "Matched files not shipped, by reason: name (one the aggregator cannot take), symlink (out of the source's directories), permission (cannot be opened)",
            m.files_refused.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The same metrics for the pipelines of one of several sinks: every series is shared,
    /// and a file's own carry `sink="name"`. Only `self` serves the registry.
    pub fn for_sink(&self, name: &str) -> Metrics {
        Metrics {
            registry: Registry::default(),
            sink: Some(Arc::from(name)),
            lines_read: self.lines_read.clone(),
            bytes_read: self.bytes_read.clone(),
            lines_acked: self.lines_acked.clone(),
            bytes_acked: self.bytes_acked.clone(),
            unshipped: self.unshipped.clone(),
            lag: self.lag.clone(),
            oldest_unacked: self.oldest_unacked.clone(),
            retries: self.retries.clone(),
            dead_letters: self.dead_letters.clone(),
            dead_letters_waiting: self.dead_letters_waiting.clone(),
            lines_truncated: self.lines_truncated.clone(),
            truncations: self.truncations.clone(),
            files_open: self.files_open.clone(),
            files_tracked: self.files_tracked.clone(),
            files_waiting: self.files_waiting.clone(),
            files_on_own_thread: self.files_on_own_thread.clone(),
            checkpoints_forgotten: self.checkpoints_forgotten.clone(),
            deleted_held: self.deleted_held.clone(),
            checkpoint_time: self.checkpoint_time.clone(),
            buffered_bytes: self.buffered_bytes.clone(),
            live: self.live.clone(),
            files_refused: self.files_refused.clone(),
            parked: self.parked.clone(),
            endpoints: self.endpoints.clone(),
            reloads: self.reloads.clone(),
            reload_failures: self.reload_failures.clone(),
            config_info: self.config_info.clone(),
        }
    }

    fn label(&self, file: &str) -> FileLabel {
        FileLabel {
            sink: self.sink.clone(),
            file: file.to_owned(),
        }
    }

    /// The key of `file` in the shared lag and live maps: its name, after the sink's when
    /// there are several.
    fn key<'a>(&self, file: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.sink {
            None => file.into(),
            Some(sink) => format!("{sink}\u{0}{file}").into(),
        }
    }

    /// A pipeline for `file` started.
    pub fn attach(&self, file: &str) {
        let mut live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *live.entry(self.key(file).into_owned()).or_default() += 1;
    }

    /// A pipeline for `file` ended; with the last one its per-file series go, so thousands of
    /// rotated or deleted files do not leave thousands of dead series.
    pub fn detach(&self, file: &str) {
        let mut live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = self.key(file);
        let Some(n) = live.get_mut(key.as_ref()) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        live.remove(key.as_ref());
        let l = self.label(file);
        self.lines_read.remove(&l);
        self.bytes_read.remove(&l);
        self.lines_acked.remove(&l);
        self.bytes_acked.remove(&l);
        self.unshipped.remove(&l);
        self.lag.forget(&key);
    }

    fn set_unshipped(&self, file: &str, bytes: u64) {
        self.unshipped
            .get_or_create(&self.label(file))
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Reading `file` starts (again) at `offset`, which counts as acknowledged: its
    /// checkpoint, the start or end of the file, or 0 after a truncation.
    pub fn read_from(&self, file: &str, offset: u64) {
        self.set_unshipped(file, self.lag.start(&self.key(file), offset));
    }

    /// The tailer saw `file` at `size` bytes.
    pub fn file_size(&self, file: &str, size: u64) {
        self.set_unshipped(file, self.lag.size(&self.key(file), size));
    }

    /// A batch of `file` whose first line was read at `read_at` went out for delivery.
    pub fn batch_out(&self, file: &str, read_at: std::time::Instant) {
        self.lag.waiting(&self.key(file), read_at);
    }

    /// `file` is acknowledged up to `offset`; `next` is when the oldest batch still out was
    /// read.
    pub fn acked_to(&self, file: &str, offset: u64, next: Option<std::time::Instant>) {
        self.set_unshipped(file, self.lag.acked(&self.key(file), offset, next));
    }

    pub fn lines_read(&self, file: &str, n: u64) {
        if n > 0 {
            self.lines_read.get_or_create(&self.label(file)).inc_by(n);
        }
    }

    pub fn bytes_read(&self, file: &str, n: u64) {
        self.bytes_read.get_or_create(&self.label(file)).inc_by(n);
    }

    pub fn acked(&self, file: &str, lines: u64, bytes: u64) {
        let l = self.label(file);
        self.lines_acked.get_or_create(&l).inc_by(lines);
        self.bytes_acked.get_or_create(&l).inc_by(bytes);
    }

    pub fn render(&self) -> String {
        self.oldest_unacked
            .set(self.lag.oldest_age(std::time::Instant::now()).as_secs_f64());
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Why the agent is not ready: the first sink that cannot be reached (every sink must be,
/// or its lines only wait). `None` when all can.
async fn not_ready(sinks: &[(Arc<str>, Arc<crate::sink::CurrentSink>)]) -> Option<String> {
    for (name, sink) in sinks {
        if let Err(e) = sink.get().ready().await {
            return Some(if sinks.len() > 1 {
                format!("sink {name:?} not reachable: {e}")
            } else {
                format!("sink not reachable: {e}")
            });
        }
    }
    None
}

/// The content type of `/metrics`, the same as the aggregator's.
const METRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics`, `/healthz` (the process is alive) and `/readyz` (the sink is
/// reachable) on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    sinks: Vec<(Arc<str>, Arc<crate::sink::CurrentSink>)>,
) -> std::io::Result<()> {
    let sinks = Arc::new(sinks);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "agent metrics listening");
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    tracing::warn!(%addr, error = %e, "metrics listener cannot accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (m, sinks) = (metrics.clone(), sinks.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (m, sinks) = (m.clone(), sinks.clone());
                    async move {
                        let (status, ctype, body) = match req.uri().path() {
                            "/metrics" => (StatusCode::OK, METRICS_TYPE, m.render()),
                            "/healthz" => (
                                StatusCode::OK,
                                "application/json",
                                r#"{"status":"alive"}"#.to_owned(),
                            ),
                            "/readyz" => match not_ready(&sinks).await {
                                None => (
                                    StatusCode::OK,
                                    "application/json",
                                    r#"{"status":"ready"}"#.to_owned(),
                                ),
                                Some(e) => (
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    "application/json",
                                    serde_json::json!({ "error": e }).to_string(),
                                ),
                            },
                            _ => (
                                StatusCode::NOT_FOUND,
                                "application/json",
                                r#"{"error":"no such route; try /metrics, /healthz or /readyz"}"#
                                    .to_owned(),
                            ),
                        };
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = status;
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(ctype),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}
