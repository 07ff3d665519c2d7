//! The aggregator sink's own metrics, per endpoint: which answer, and how each request
//! ended. Here, with the sink, so the sink needs nothing of the agent's metrics module (which
//! registers them).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;

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
    /// When the endpoint last acknowledged a batch (Unix time, s).
    pub last_ack: Family<EndpointLabel, Gauge<f64, AtomicU64>>,
    /// Multi-file requests sent, and the file batches they carried: the ratio is how many
    /// files share a request.
    pub joined_requests: Counter,
    pub joined_batches: Counter,
}

/// Every `outcome` label [`EndpointMetrics::requests`] takes.
pub const OUTCOMES: [&str; 6] = ["ok", "retry", "hedged", "park", "too_large", "reject"];

impl EndpointMetrics {
    /// Drops an endpoint's series: a reload removed it from `sink.url`, and an alert on
    /// `agent_endpoint_up == 0` must not fire for an endpoint nobody sends to.
    pub fn forget(&self, endpoint: &str) {
        let endpoint = endpoint.to_owned();
        for outcome in OUTCOMES {
            self.requests.remove(&EndpointOutcome {
                endpoint: endpoint.clone(),
                outcome,
            });
        }
        let label = EndpointLabel { endpoint };
        self.up.remove(&label);
        self.last_ack.remove(&label);
    }
}
