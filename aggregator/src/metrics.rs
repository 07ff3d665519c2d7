//! Prometheus metrics of the aggregator, rendered at `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    /// The HTTP status, under Prometheus' usual label name.
    pub code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
}

/// Every metric the aggregator exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram>,
    pub errors: Family<ErrorLabels, Counter>,
    pub lines_received: Counter,
    pub lines_new: Counter,
    pub bytes_received: Counter,
    pub connections_open: Gauge,
    pub connections_rejected: Counter,
    /// TLS handshakes that failed or timed out (garbage, a client that does not trust us, a
    /// missing client certificate under mTLS).
    pub tls_handshake_failures: Counter,
    pub connections_reclaimed: Counter,
    pub followers: Gauge,
    /// Searches run (`GET /store/search`), and the stored bytes they scanned.
    pub searches: Counter,
    pub search_bytes: Counter,
    /// Searches holding a `search.max_searches` slot now.
    pub searches_running: Gauge,
    /// Searches ended because their client stopped reading.
    pub searches_stalled: Counter,
    pub store_size: Gauge,
    pub generations_dropped: Counter,
    pub segments_compacted: Counter,
    pub bytes_reclaimed: Counter,
    pub sweep_failures: Counter,
    pub sweep_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// The longest a worker thread was busy on one poll of each request or response stream.
    pub worker_busy: Histogram,
    /// Requests refused because `limits.ingest_memory` stayed spent.
    pub ingest_memory_refusals: Counter,
    /// Successful and failed config reloads (SIGHUP).
    pub reloads: Counter,
    pub reload_failures: Counter,
    /// Sweeps run, so a test (or an operator) can tell that retention looked at the store.
    pub sweeps: Counter,
    /// Wall-clock jumps the retention clock refused to follow (see `store::clock`).
    pub clock_jumps: Counter,
    /// How far retention's clock is behind the wall clock after a forward jump.
    pub retention_clock_behind: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aggregator");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to answer (headers) by route",
            latency.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("errors", "Error answers by kind", errors.clone());
        let lines_received = Counter::default();
        registry.register(
            "lines_received",
            "Lines acknowledged (resends included)",
            lines_received.clone(),
        );
        let lines_new = Counter::default();
        registry.register(
            "lines_stored",
            "Lines stored that were not stored before",
            lines_new.clone(),
        );
        let bytes_received = Counter::default();
        registry.register(
            "bytes_received",
            "Line content bytes acknowledged",
            bytes_received.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections being served",
            connections_open.clone(),
        );
        let connections_rejected = Counter::default();
        registry.register(
            "connections_rejected",
            "Connections answered 503 because max_connections was reached",
            connections_rejected.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or did not finish within header_read_timeout",
            tls_handshake_failures.clone(),
        );
        let connections_reclaimed = Counter::default();
        registry.register(
            "connections_reclaimed",
            "Idle keep-alive connections closed to make room at max_connections",
            connections_reclaimed.clone(),
        );
        let followers = Gauge::default();
        registry.register("followers", "Open follow=true downloads", followers.clone());
        let searches = Counter::default();
        registry.register("searches", "Searches run", searches.clone());
        let search_bytes = Counter::default();
        registry.register(
            "search_scanned_bytes",
            "Stored bytes read by searches",
            search_bytes.clone(),
        );
        let searches_running = Gauge::default();
        registry.register(
            "searches_running",
            "Searches holding a search.max_searches slot",
            searches_running.clone(),
        );
        let searches_stalled = Counter::default();
        registry.register(
            "searches_stalled",
            "Searches ended because their client stopped reading",
            searches_stalled.clone(),
        );
        let store_size = Gauge::default();
        registry.register(
            "store_size_bytes",
            "Bytes the store takes on disk",
            store_size.clone(),
        );
        let generations_dropped = Counter::default();
        registry.register(
            "retention_generations_dropped",
            "Generations dropped by retention or max_disk_bytes",
            generations_dropped.clone(),
        );
        let segments_compacted = Counter::default();
        registry.register(
            "compaction_segments",
            "Segment files compacted and deleted",
            segments_compacted.clone(),
        );
        let bytes_reclaimed = Counter::default();
        registry.register(
            "compaction_reclaimed_bytes",
            "Disk bytes given back by compaction",
            bytes_reclaimed.clone(),
        );
        let sweep_failures = Counter::default();
        registry.register(
            "sweep_failures",
            "Retention/compaction sweeps that failed",
            sweep_failures.clone(),
        );
        let sweep_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "sweep_duration_seconds",
            "How long the last retention/compaction sweep took",
            sweep_seconds.clone(),
        );
        let worker_busy = crate::busy::histogram();
        registry.register(
            "worker_busy_seconds",
            "Per request or response stream: the longest one poll kept a runtime worker busy (offloaded decoding excluded)",
            worker_busy.clone(),
        );
        let ingest_memory_refusals = Counter::default();
        registry.register(
            "ingest_memory_refusals",
            "Ingest requests answered 503 because limits.ingest_memory stayed spent",
            ingest_memory_refusals.clone(),
        );
        let reloads = Counter::default();
        registry.register(
            "config_reloads",
            "Configuration reloads applied (SIGHUP)",
            reloads.clone(),
        );
        let reload_failures = Counter::default();
        registry.register(
            "config_reload_failures",
            "Configuration reloads refused (the running configuration stayed)",
            reload_failures.clone(),
        );
        let sweeps = Counter::default();
        registry.register("sweeps", "Retention/compaction sweeps run", sweeps.clone());
        let clock_jumps = Counter::default();
        registry.register(
            "retention_clock_jumps",
            "Wall-clock jumps seen between sweeps; retention measured them with the monotonic clock",
            clock_jumps.clone(),
        );
        let retention_clock_behind = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "retention_clock_behind_seconds",
            "How far the clock retention uses is behind the wall clock (after a forward jump)",
            retention_clock_behind.clone(),
        );
        Metrics {
            registry,
            ingest_memory_refusals,
            worker_busy,
            reloads,
            reload_failures,
            sweeps,
            clock_jumps,
            retention_clock_behind,
            generations_dropped,
            segments_compacted,
            bytes_reclaimed,
            sweep_failures,
            sweep_seconds,
            requests,
            latency,
            errors,
            lines_received,
            lines_new,
            bytes_received,
            connections_open,
            connections_rejected,
            tls_handshake_failures,
            connections_reclaimed,
            followers,
            searches,
            search_bytes,
            searches_running,
            searches_stalled,
            store_size,
        }
    }

    /// Adds the store's own metrics.
    pub fn register_store(&mut self, store: &dyn crate::store::Store) {
        store.register_metrics(&mut self.registry);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}
