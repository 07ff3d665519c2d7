//! The sink in force. A reload that changes `[sink]` swaps it; whatever waits on the old one
//! (a backoff sleep, a file parked on a refused token) wakes at once and tries the new one
//! with its backoff reset, and `/readyz` asks the new one. Without this, a fixed URL or token
//! took effect only when the old backoff ran out (seconds to minutes), and `/readyz` kept
//! reporting an endpoint the config no longer names.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use super::Sink;

pub struct CurrentSink {
    sink: RwLock<Arc<dyn Sink>>,
    /// Bumped at every swap.
    swaps: watch::Sender<u64>,
}

impl std::fmt::Debug for CurrentSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentSink")
            .field("swaps", &*self.swaps.borrow())
            .finish()
    }
}

impl CurrentSink {
    pub fn new(sink: Arc<dyn Sink>) -> Self {
        CurrentSink {
            sink: RwLock::new(sink),
            swaps: watch::Sender::new(0),
        }
    }

    pub fn get(&self) -> Arc<dyn Sink> {
        self.sink
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `sink` in force and wakes everything sleeping in [`CurrentSink::sleep`].
    pub fn replace(&self, sink: Arc<dyn Sink>) {
        *self.sink.write().unwrap_or_else(PoisonError::into_inner) = sink;
        self.swaps.send_modify(|n| *n += 1);
    }

    /// A handle that notices swaps made after this call.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.swaps.subscribe()
    }

    /// Sleeps `delay`, or less if the sink is swapped meanwhile (or was since `seen` last
    /// looked): true when a swap ended the sleep.
    pub async fn sleep(seen: &mut watch::Receiver<u64>, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        tokio::select! {
            () = &mut sleep => false,
            changed = seen.changed() => match changed {
                Ok(()) => true,
                // No sink holder any more: never a reason to retry sooner than the delay.
                Err(_) => {
                    sleep.await;
                    false
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_swap_ends_a_sleep_at_once_and_a_sleep_without_one_runs_its_course() {
        let current = Arc::new(CurrentSink::new(Arc::new(super::super::stdout::StdoutSink)));
        let mut seen = current.watch();
        let started = std::time::Instant::now();
        assert!(!CurrentSink::sleep(&mut seen, Duration::from_millis(30)).await);
        assert!(started.elapsed() >= Duration::from_millis(30));
        let swapper = current.clone();
        let swap = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            swapper.replace(Arc::new(super::super::stdout::StdoutSink));
        });
        let started = std::time::Instant::now();
        assert!(CurrentSink::sleep(&mut seen, Duration::from_secs(30)).await);
        assert!(started.elapsed() < Duration::from_secs(10));
        swap.await.expect("swap");
        // Seen: the next sleep is not cut short by the same swap.
        assert!(!CurrentSink::sleep(&mut seen, Duration::from_millis(10)).await);
    }
}
