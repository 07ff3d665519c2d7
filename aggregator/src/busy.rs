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

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;

pub use logship_common::offload::{offload, offload_if, INLINE_BYTES};

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
/// A poll shorter than this in wall time is counted as its wall time (the histogram's first
/// bucket is 0.5 ms).
const SHORT_POLL: Duration = Duration::from_micros(250);

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
        let offloaded = logship_common::offload::offloaded();
        let wall = std::time::Instant::now();
        let cpu_then = recent_cpu_reading(wall);
        let r = self.inner.as_mut().poll(cx);
        // A short poll used at most its wall time: the thread clock (a real syscall, unlike
        // the wall clock) is only needed to leave preemption out of a long one. Under a fleet
        // of small requests one read per poll was 3–4 % of the aggregator's CPU.
        let elapsed = wall.elapsed();
        let used = if elapsed < SHORT_POLL {
            elapsed
        } else {
            // Since a reading at most SHORT_POLL before this poll began: at most that much
            // too long, never more than the poll's wall time.
            let cpu = logship_common::thread_cpu_time().saturating_sub(cpu_then);
            cpu.min(elapsed)
        };
        let busy =
            used.saturating_sub(logship_common::offload::offloaded().saturating_sub(offloaded));
        self.longest = self.longest.max(busy);
        r
    }
}

thread_local! {
    /// This thread's last CPU-clock reading and the wall time it was taken.
    static CPU_READING: std::cell::Cell<Option<(std::time::Instant, Duration)>> =
        const { std::cell::Cell::new(None) };
}

/// A reading of this thread's CPU clock taken at most [`SHORT_POLL`] before `now`: reused
/// between polls that follow each other closely, so a worker reads the clock (a syscall) a
/// few thousand times a second at most, not once per poll.
fn recent_cpu_reading(now: std::time::Instant) -> Duration {
    CPU_READING.with(|c| match c.get() {
        Some((at, cpu)) if now.saturating_duration_since(at) <= SHORT_POLL => cpu,
        _ => {
            let cpu = logship_common::thread_cpu_time();
            c.set(Some((now, cpu)));
            cpu
        }
    })
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

    /// Burns `d` of this thread's CPU time (a sleep would not count; nor would a wall-clock
    /// spin on a busy machine, where it gets a fraction of a core).
    fn spin(d: Duration) {
        let until = logship_common::thread_cpu_time() + d;
        let mut x = 0u64;
        while logship_common::thread_cpu_time() < until {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    /// The histogram as Prometheus text, and a lookup of the cumulative count at a bound.
    fn buckets(h: Histogram) -> (String, impl Fn(&str) -> Option<u64>) {
        let mut text = String::new();
        let mut r = prometheus_client::registry::Registry::default();
        r.register("busy", "", h);
        prometheus_client::encoding::text::encode(&mut text, &r).expect("encode");
        let lines = text.clone();
        let count = move |le: &str| {
            lines
                .lines()
                .find(|l| l.contains(&format!("le=\"{le}\"")))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse::<u64>().ok())
        };
        (text, count)
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
        let (text, count) = buckets(h);
        assert_eq!(count("0.01"), Some(1), "{text}");
        assert_eq!(count("0.05"), Some(2), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cpu_spent_before_a_poll_is_not_counted_in_it() {
        // The clock reading is reused between close polls; one taken before a gap of busy
        // work elsewhere on this thread must not make a later waiting poll look busy.
        let h = histogram();
        Timed::new(async {}, h.clone(), "test").await;
        spin(Duration::from_millis(30));
        Timed::new(
            async {
                // Long in wall time, idle in CPU time.
                std::thread::sleep(Duration::from_millis(30));
            },
            h.clone(),
            "test",
        )
        .await;
        let (text, count) = buckets(h);
        assert_eq!(count("0.005"), Some(2), "{text}");
    }
}
