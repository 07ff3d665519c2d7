//! Exponential backoff with full jitter: small named state, reset on success.

use std::time::Duration;

/// Delays between retries: a random delay in `[0, min(max, initial × 2^attempt)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The next delay; a server's `Retry-After` is a floor, never shortened by jitter.
    pub fn next(&mut self, retry_after: Option<Duration>) -> Duration {
        let cap = self
            .initial
            .saturating_mul(1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jittered = cap.mul_f64(fastrand::f64());
        jittered.max(retry_after.unwrap_or(Duration::ZERO))
    }

    /// Attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_honours_retry_after() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..50 {
            assert!(b.next(None) <= Duration::from_secs(1));
        }
        assert!(b.next(Some(Duration::from_secs(5))) >= Duration::from_secs(5));
        b.reset();
        assert!(b.next(None) <= Duration::from_millis(100));
        assert_eq!(b.attempts(), 1);
    }
}
