//! What a request costs the async runtime's worker threads (in thread CPU time, so a
//! busy machine preempting a worker does not count as the request's doing).
//!
//! CPU-heavy steps (decompressing, decoding, merging buckets) run through [`offload`], which
//! hands the worker's other tasks to another thread for the duration (`block_in_place`), so
//! one large request never holds up other connections. [`Timed`] measures the rest: the
//! longest time one poll of a request (or of a response stream) kept a worker thread busy,
//! minus what was offloaded, observed into `aggregator_worker_busy_seconds` — so "no worker
//! busy more than 10 ms on one request" is a figure an operator (and the hardening tests)
//! can read, not a hope.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

thread_local! {
    /// Time this thread spent in [`offload`]ed work, so [`Timed`] can leave it out.
    static OFFLOADED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// Below this much input, a step runs inline: handing the worker over (`block_in_place`)
/// costs thread switches that, for an agent's usual ~100 KB batch, were a quarter of the
/// aggregator's CPU (measured: 6.4–6.8 → 4.8–5.0 CPU s per GB stored), while the step itself
/// takes well under a millisecond.
pub const INLINE_BYTES: usize = 256 * 1024;

/// [`offload`] when `large`, else runs `f` right here.
pub fn offload_if<R>(large: bool, f: impl FnOnce() -> R) -> R {
    if large {
        offload(f)
    } else {
        f()
    }
}

/// Runs CPU-heavy or blocking work from an async task without holding up the worker's
/// other tasks.
pub fn offload<R>(f: impl FnOnce() -> R) -> R {
    let started = logship_common::thread_cpu_time();
    let r = tokio::task::block_in_place(f);
    let used = logship_common::thread_cpu_time().saturating_sub(started);
    OFFLOADED.with(|c| c.set(c.get() + used));
    r
}

/// The histogram of the longest worker-busy poll per request.
pub fn histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    ])
}

/// A future whose longest poll (less offloaded work) is observed when it completes or is
/// dropped.
pub struct Timed<F> {
    inner: Pin<Box<F>>,
    longest: Duration,
    histogram: Histogram,
    /// What the future serves, for the warning when a poll was slow.
    what: String,
}

/// A poll longer than this is logged (with what it served).
const SLOW_POLL: Duration = Duration::from_millis(10);

impl<F> Timed<F> {
    pub fn new(inner: F, histogram: Histogram, what: impl Into<String>) -> Self {
        Timed {
            inner: Box::pin(inner),
            longest: Duration::ZERO,
            histogram,
            what: what.into(),
        }
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let offloaded = OFFLOADED.with(Cell::get);
        let started = logship_common::thread_cpu_time();
        let r = self.inner.as_mut().poll(cx);
        let busy = logship_common::thread_cpu_time()
            .saturating_sub(started)
            .saturating_sub(OFFLOADED.with(Cell::get).saturating_sub(offloaded));
        self.longest = self.longest.max(busy);
        r
    }
}

impl<F> Drop for Timed<F> {
    fn drop(&mut self) {
        self.histogram.observe(self.longest.as_secs_f64());
        if self.longest > SLOW_POLL {
            tracing::warn!(what = %self.what, busy = ?self.longest, "a request kept a runtime worker busy");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Burns CPU for about `d` (a sleep would not count: it is not CPU time).
    fn spin(d: Duration) {
        let until = std::time::Instant::now() + d;
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offloaded_work_is_not_counted_and_busy_work_is() {
        let h = histogram();
        Timed::new(
            async {
                offload(|| spin(Duration::from_millis(30)));
            },
            h.clone(),
            "test",
        )
        .await;
        Timed::new(
            async {
                spin(Duration::from_millis(30));
            },
            h.clone(),
            "test",
        )
        .await;
        let mut text = String::new();
        let mut r = prometheus_client::registry::Registry::default();
        r.register("busy", "", h);
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
        let count = |le: &str| {
            text.lines()
                .find(|l| l.contains(&format!("le=\"{le}\"")))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse::<u64>().ok())
        };
        assert_eq!(count("0.01"), Some(1), "{text}");
        assert_eq!(count("0.05"), Some(2), "{text}");
    }
}
