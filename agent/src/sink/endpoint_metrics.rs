//! The aggregator sink's own metrics, per endpoint: which answer, and how each request
//! ended. Here, with the sink, so the sink needs nothing of the agent's metrics module (which
//! registers them).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointOutcome {
    pub endpoint: String,
    /// ok, retry, hedged, park, too_large, reject.
    pub outcome: &'static str,
}

/// Per-aggregator metrics of the sink: which endpoints answer, and how each request ended.
#[derive(Debug, Clone, Default)]
pub struct EndpointMetrics {
    pub requests: Family<EndpointOutcome, Counter>,
    /// 1 while the endpoint is taking batches, 0 while it is skipped after a failure.
    pub up: Family<EndpointLabel, Gauge>,
}
