//! Running CPU-heavy or blocking steps from async code without holding up a runtime
//! worker's other tasks, and counting the time so spent (the aggregator's `Timed` leaves it
//! out of what a request kept a worker busy). Shared by the HTTP layer and the store.

use std::cell::Cell;
use std::time::Duration;

thread_local! {
    /// Time this thread spent in [`offload`]ed work.
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
/// other tasks (`block_in_place`: they move to another thread meanwhile).
pub fn offload<R>(f: impl FnOnce() -> R) -> R {
    let started = crate::thread_cpu_time();
    let r = tokio::task::block_in_place(f);
    let used = crate::thread_cpu_time().saturating_sub(started);
    OFFLOADED.with(|c| c.set(c.get() + used));
    r
}

/// The thread CPU time this thread has spent in [`offload`] so far.
pub fn offloaded() -> Duration {
    OFFLOADED.with(Cell::get)
}
