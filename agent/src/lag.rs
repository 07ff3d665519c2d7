//! Delivery lag per file, for the alerts every operator writes: how many bytes a file holds
//! beyond what the aggregator acknowledged (`agent_unshipped_bytes`) and how long the oldest
//! line read but not acknowledged has waited (`agent_oldest_unacked_age_seconds`). Both move
//! from the moment a file is read — the tailer reports the file's size at every read — so
//! they grow during an outage, when they matter, instead of appearing with the first ack.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Lag {
    files: Mutex<HashMap<String, FileLag>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct FileLag {
    /// The file's size when last read.
    size: u64,
    /// The acknowledged position (the checkpoint's offset).
    acked: u64,
    /// When the oldest line waiting for an acknowledgement was read.
    oldest: Option<Instant>,
}

impl FileLag {
    fn unshipped(&self) -> u64 {
        self.size.saturating_sub(self.acked)
    }
}

impl Lag {
    fn with<T>(&self, file: &str, f: impl FnOnce(&mut FileLag) -> T) -> T {
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        match files.get_mut(file) {
            Some(l) => f(l),
            None => f(files.entry(file.to_owned()).or_default()),
        }
    }

    /// Reading starts (again) at `acked`: a checkpoint, the start, the end, or 0 after a
    /// truncation. Returns the bytes unshipped.
    pub fn start(&self, file: &str, acked: u64) -> u64 {
        self.with(file, |l| {
            l.acked = acked;
            l.unshipped()
        })
    }

    /// The tailer saw the file at `size` bytes. Returns the bytes unshipped.
    pub fn size(&self, file: &str, size: u64) -> u64 {
        self.with(file, |l| {
            l.size = size;
            l.unshipped()
        })
    }

    /// A batch whose first line was read at `read_at` went out for delivery.
    pub fn waiting(&self, file: &str, read_at: Instant) {
        self.with(file, |l| {
            l.oldest = Some(l.oldest.map_or(read_at, |o| o.min(read_at)));
        });
    }

    /// Acknowledged up to `offset`; `next` is when the oldest batch still out was read.
    /// Returns the bytes unshipped.
    pub fn acked(&self, file: &str, offset: u64, next: Option<Instant>) -> u64 {
        self.with(file, |l| {
            l.acked = offset;
            l.size = l.size.max(offset);
            l.oldest = next;
            l.unshipped()
        })
    }

    pub fn forget(&self, file: &str) {
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(file);
    }

    /// How long the oldest unacknowledged line of any file has waited (zero if none waits).
    pub fn oldest_age(&self, now: Instant) -> Duration {
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(|l| l.oldest)
            .map(|o| now.saturating_duration_since(o))
            .max()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unshipped_bytes_grow_with_reads_and_shrink_with_acks() {
        let lag = Lag::default();
        assert_eq!(lag.start("/f", 100), 0);
        assert_eq!(lag.size("/f", 1_000), 900, "read, not acknowledged");
        assert_eq!(
            lag.size("/f", 5_000),
            4_900,
            "grows while nothing is acknowledged"
        );
        assert_eq!(lag.acked("/f", 3_000, None), 2_000);
        assert_eq!(lag.start("/f", 0), 5_000, "after a truncation");
        lag.forget("/f");
        assert_eq!(lag.size("/f", 10), 10);
    }

    #[test]
    fn the_oldest_age_is_the_oldest_batch_out_and_moves_with_acks() {
        let lag = Lag::default();
        let t0 = Instant::now();
        assert_eq!(lag.oldest_age(t0), Duration::ZERO);
        lag.waiting("/a", t0);
        lag.waiting("/a", t0 + Duration::from_secs(5));
        lag.waiting("/b", t0 + Duration::from_secs(8));
        let now = t0 + Duration::from_secs(10);
        assert_eq!(lag.oldest_age(now), Duration::from_secs(10));
        lag.acked("/a", 10, Some(t0 + Duration::from_secs(5)));
        assert_eq!(lag.oldest_age(now), Duration::from_secs(5));
        lag.acked("/a", 20, None);
        assert_eq!(
            lag.oldest_age(now),
            Duration::from_secs(2),
            "/b still waits"
        );
        lag.acked("/b", 20, None);
        assert_eq!(lag.oldest_age(now), Duration::ZERO);
    }
}
