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

/// Every metric the aggregator exports, grouped by the part of the service that moves them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http: Connections,
    pub ingest: Ingest,
    pub search: Searches,
    pub retention: Retention,
    pub reload: Reloads,
    /// Per-host last-seen time and lines (bounded).
    pub fleet: crate::fleet::Fleet,
}

/// Metrics of connections, requests and how long their polls kept a worker busy.
#[derive(Debug)]
pub struct Connections {
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram>,
    pub errors: Family<ErrorLabels, Counter>,
    pub connections_open: Gauge,
    pub connections_rejected: Counter,
    /// TLS handshakes that failed or timed out (garbage, a client that does not trust us, a
    /// missing client certificate under mTLS).
    pub tls_handshake_failures: Counter,
    pub connections_reclaimed: Counter,
    pub followers: Gauge,
    /// The longest a worker thread was busy on one poll of each request or response stream.
    pub worker_busy: Histogram,
}

impl Connections {
    fn new(r: &mut Registry) -> Self {
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        Self {
            requests: register(
                r,
                "http_requests",
                "HTTP requests by route and status",
                Default::default(),
            ),
            latency: register(
                r,
                "http_request_duration_seconds",
                "Time to answer (headers) by route",
                latency,
            ),
            errors: register(r, "errors", "Error answers by kind", Default::default()),
            connections_open: register(
                r,
                "connections_open",
                "Connections being served",
                Default::default(),
            ),
            connections_rejected: register(
                r,
                "connections_rejected",
                "Connections answered 503 because max_connections was reached",
                Default::default(),
            ),
            tls_handshake_failures: register(
                r,
                "tls_handshake_failures",
                "TLS handshakes that failed or did not finish within header_read_timeout",
                Default::default(),
            ),
            connections_reclaimed: register(
                r,
                "connections_reclaimed",
                "Idle keep-alive connections closed to make room at max_connections",
                Default::default(),
            ),
            followers: register(
                r,
                "followers",
                "Open follow=true downloads",
                Default::default(),
            ),
            worker_busy: register(
                r,
                "worker_busy_seconds",
                "Per request or response stream: the longest one poll kept a runtime worker busy \
                 (offloaded decoding excluded)",
                crate::busy::histogram(),
            ),
        }
    }
}

/// Metrics of what writes brought in and what the ingest memory budget refused.
#[derive(Debug)]
pub struct Ingest {
    /// Loki and OTLP pushes: lines stored, resends dropped, entries refused, per protocol.
    pub push_lines: Family<ProtocolLabels, Counter>,
    pub push_duplicates: Family<ProtocolLabels, Counter>,
    pub push_rejected: Family<ProtocolLabels, Counter>,
    pub lines_received: Counter,
    pub lines_new: Counter,
    pub bytes_received: Counter,
    /// Requests refused because `limits.ingest_memory` stayed spent.
    pub ingest_memory_refusals: Counter,
}

/// Which push protocol a count is of.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

impl Ingest {
    /// Counts what one push did: lines stored, resends left out, entries refused.
    pub fn pushed(&self, protocol: &'static str, stored: u64, duplicates: u64, rejected: u64) {
        let l = ProtocolLabels { protocol };
        self.push_lines.get_or_create(&l).inc_by(stored);
        self.push_duplicates.get_or_create(&l).inc_by(duplicates);
        self.push_rejected.get_or_create(&l).inc_by(rejected);
    }

    fn new(r: &mut Registry) -> Self {
        Self {
            push_lines: register(
                r,
                "push_lines",
                "Lines stored from Loki and OTLP pushes",
                Default::default(),
            ),
            push_duplicates: register(
                r,
                "push_duplicates",
                "Pushed entries not stored because they resent lines already stored",
                Default::default(),
            ),
            push_rejected: register(
                r,
                "push_rejected",
                "Pushed entries refused (the rest of their push stored)",
                Default::default(),
            ),
            lines_received: register(
                r,
                "lines_received",
                "Lines acknowledged (resends included)",
                Default::default(),
            ),
            lines_new: register(
                r,
                "lines_stored",
                "Lines stored that were not stored before",
                Default::default(),
            ),
            bytes_received: register(
                r,
                "bytes_received",
                "Line content bytes acknowledged",
                Default::default(),
            ),
            ingest_memory_refusals: register(
                r,
                "ingest_memory_refusals",
                "Ingest requests answered 503 because limits.ingest_memory stayed spent",
                Default::default(),
            ),
        }
    }
}

/// Metrics of searches and what they cost.
#[derive(Debug)]
pub struct Searches {
    /// Searches run (`GET /store/search`), and the stored bytes they scanned.
    pub searches: Counter,
    pub search_bytes: Counter,
    /// Searches holding a `search.max_searches` slot now.
    pub searches_running: Gauge,
    /// Searches ended because their client stopped reading.
    pub searches_stalled: Counter,
}

impl Searches {
    fn new(r: &mut Registry) -> Self {
        Self {
            searches: register(r, "searches", "Searches run", Default::default()),
            search_bytes: register(
                r,
                "search_scanned_bytes",
                "Stored bytes read by searches",
                Default::default(),
            ),
            searches_running: register(
                r,
                "searches_running",
                "Searches holding a search.max_searches slot",
                Default::default(),
            ),
            searches_stalled: register(
                r,
                "searches_stalled",
                "Searches ended because their client stopped reading",
                Default::default(),
            ),
        }
    }
}

/// Metrics of the store's size and what the sweeper did to it.
#[derive(Debug)]
pub struct Retention {
    pub store_size: Gauge,
    pub generations_dropped: Counter,
    /// Lines retention removed from generations still written to.
    pub lines_trimmed: Counter,
    pub segments_compacted: Counter,
    pub bytes_reclaimed: Counter,
    pub sweep_failures: Counter,
    pub sweep_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Sweeps run, so a test (or an operator) can tell that retention looked at the store.
    pub sweeps: Counter,
    /// Wall-clock jumps the retention clock refused to follow (see `store::clock`).
    pub clock_jumps: Counter,
    /// How far retention's clock is behind the wall clock after a forward jump.
    pub retention_clock_behind: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Retention {
    fn new(r: &mut Registry) -> Self {
        Self {
            store_size: register(
                r,
                "store_size_bytes",
                "Bytes the store takes on disk",
                Default::default(),
            ),
            generations_dropped: register(
                r,
                "retention_generations_dropped",
                "Generations dropped by retention or max_disk_bytes",
                Default::default(),
            ),
            lines_trimmed: register(
                r,
                "retention_lines_trimmed",
                "Lines retention removed from the oldest buckets of generations still written to",
                Default::default(),
            ),
            segments_compacted: register(
                r,
                "compaction_segments",
                "Segment files compacted and deleted",
                Default::default(),
            ),
            bytes_reclaimed: register(
                r,
                "compaction_reclaimed_bytes",
                "Disk bytes given back by compaction",
                Default::default(),
            ),
            sweep_failures: register(
                r,
                "sweep_failures",
                "Retention/compaction sweeps that failed",
                Default::default(),
            ),
            sweep_seconds: register(
                r,
                "sweep_duration_seconds",
                "How long the last retention/compaction sweep took",
                Default::default(),
            ),
            sweeps: register(
                r,
                "sweeps",
                "Retention/compaction sweeps run",
                Default::default(),
            ),
            clock_jumps: register(
                r,
                "retention_clock_jumps",
                "Wall-clock jumps seen between sweeps; retention measured them with the monotonic \
                 clock",
                Default::default(),
            ),
            retention_clock_behind: register(
                r,
                "retention_clock_behind_seconds",
                "How far the clock retention uses is behind the wall clock (after a forward jump)",
                Default::default(),
            ),
        }
    }
}

/// Metrics of configuration reloads (SIGHUP).
#[derive(Debug)]
pub struct Reloads {
    /// Successful and failed config reloads (SIGHUP).
    pub reloads: Counter,
    pub reload_failures: Counter,
    /// 1 for the hash of the configuration in force.
    pub config_info: logship_common::config_info::ConfigInfo,
}

impl Reloads {
    fn new(r: &mut Registry) -> Self {
        Self {
            reloads: register(
                r,
                "config_reloads",
                "Configuration reloads applied (SIGHUP)",
                Default::default(),
            ),
            reload_failures: register(
                r,
                "config_reload_failures",
                "Configuration reloads refused (the running configuration stayed)",
                Default::default(),
            ),
            config_info: {
                let info = logship_common::config_info::ConfigInfo::default();
                register(
                    r,
                    "config_info",
                    "1 for the hash of the configuration in force",
                    info.family.clone(),
                );
                info
            },
        }
    }
}

/// Registers `metric` under `name` and returns it, so `Metrics::new` is one list of metrics
/// rather than a let and a register call for each.
fn register<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("aggregator");
        Metrics {
            http: Connections::new(&mut registry),
            ingest: Ingest::new(&mut registry),
            search: Searches::new(&mut registry),
            retention: Retention::new(&mut registry),
            reload: Reloads::new(&mut registry),
            fleet: crate::fleet::Fleet::new(&mut registry),
            registry,
        }
    }

    /// Adds the store's own metrics.
    pub fn register_store(&mut self, store: &dyn crate::store::Store) {
        store.register_metrics(&mut self.registry);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.fleet.prune();
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}
