//! Rate-limited logging by key: an error that repeats for every file or every request (a
//! wrong token on a thousand files, a client retrying a refused request) is logged once a
//! minute per endpoint or client, not once per event. The map of keys is bounded, so a
//! stream of distinct keys (addresses) cannot grow it without end.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogLimit<K> {
    every: Duration,
    cap: usize,
    last: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq> LogLimit<K> {
    /// At most one line per key every `every`, remembering at most `cap` keys.
    pub fn new(every: Duration, cap: usize) -> Self {
        LogLimit {
            every,
            cap: cap.max(1),
            last: Mutex::default(),
        }
    }

    /// Whether a line about `key` should be logged now (and if so, remembers that it was).
    pub fn due(&self, key: K) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < self.every)
        {
            return false;
        }
        if last.len() >= self.cap {
            // Keys whose minute is over are the ones to forget; if none is, forget them all
            // (a burst of distinct keys then logs a line each, which is the point).
            last.retain(|_, t| now.duration_since(*t) < self.every);
            if last.len() >= self.cap {
                last.clear();
            }
        }
        last.insert(key, now);
        true
    }
}

impl<K: Hash + Eq> Default for LogLimit<K> {
    /// Once a minute per key, up to 4,096 keys.
    fn default() -> Self {
        Self::new(Duration::from_secs(60), 4096)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_key_per_period_with_a_bounded_memory() {
        let l = LogLimit::new(Duration::from_secs(60), 3);
        assert!(l.due("a"));
        assert!(!l.due("a"), "the same key within the minute");
        assert!(l.due("b"));
        assert!(l.due("c"));
        assert!(l.due("d"), "a new key past the cap is still logged");
        assert!(
            l.last.lock().expect("lock").len() <= 3,
            "the map stays bounded"
        );
        let quick = LogLimit::new(Duration::ZERO, 8);
        assert!(
            quick.due(1) && quick.due(1),
            "a zero period logs every time"
        );
    }
}
