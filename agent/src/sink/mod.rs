//! Sinks: where batches go. A sink answers one attempt with an [`Outcome`]; the sender
//! owns retries, splitting and dead letters, so every sink gets them for free.
//!
//! Adding a sink: one file implementing [`Sink`], one line in [`build`] and in
//! [`crate::config::SINK_KINDS`].

mod aggregator;
mod coalesce;
mod current;
pub mod endpoint_metrics;
mod protocol;
mod stdout;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::SinkSettings;

pub use current::CurrentSink;

/// A boxed future, so sinks are object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged: durable at the destination.
    Ok,
    /// Try again later (connect error, timeout, 408, 429, 5xx); `after` from `Retry-After`.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The body is too large (413): split it.
    TooLarge,
    /// The endpoint is misconfigured, not the batch at fault (401, 403, 404, a 2xx that is
    /// not an acknowledgement, …): keep the batch and the checkpoint, retry with backoff
    /// until an operator fixes the config. Dead-lettering here would lose every line sent
    /// while the token or URL was wrong.
    Park { endpoint: String, reason: String },
    /// The batch itself will never be accepted (400, 422): dead-letter it.
    Reject { reason: String },
}

/// A destination for compact batch bodies.
pub trait Sink: Send + Sync + 'static {
    /// Delivers one compact body once.
    fn send<'a>(&'a self, body: &'a [u8]) -> BoxFuture<'a, Outcome>;

    /// Delivers one compact body once, its first line read at `read_at_ms` (ms since the
    /// epoch): the time a sink that carries one per line gives them, the same at every
    /// retry. Sinks without times take [`send`](Sink::send).
    fn send_at<'a>(&'a self, body: &'a [u8], read_at_ms: u64) -> BoxFuture<'a, Outcome> {
        let _ = read_at_ms;
        self.send(body)
    }

    /// Delivers one batch once, taking one of `in_flight` (the agent's cap on requests in
    /// flight) for its request. A sink that joins many files' batches into one request
    /// takes a slot per request instead, so the slots bound requests, not batches.
    fn deliver<'a>(
        &'a self,
        body: &'a Arc<Vec<u8>>,
        read_at_ms: u64,
        in_flight: &'a Arc<Semaphore>,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let _permit = in_flight.acquire().await;
            self.send_at(body, read_at_ms).await
        })
    }

    /// Whether the destination places lines by their number, so that batches of one file
    /// may be in flight together. A destination that appends lines as they arrive (Loki,
    /// OTLP) takes a file's batches one at a time, or a retried batch would land after the
    /// next one.
    fn places_by_number(&self) -> bool {
        true
    }

    /// Whether the destination can be reached now (the agent's `/readyz`).
    fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// Builds the configured sink.
pub fn build(
    s: &SinkSettings,
    endpoints: &endpoint_metrics::EndpointMetrics,
) -> anyhow::Result<Arc<dyn Sink>> {
    Ok(match s.kind.as_str() {
        "aggregator" | "loki" | "otlp" => {
            Arc::new(aggregator::AggregatorSink::new(s, endpoints.clone())?)
        }
        "stdout" => Arc::new(stdout::StdoutSink),
        other => anyhow::bail!("unknown sink type {other:?}"),
    })
}
