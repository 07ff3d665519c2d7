//! `order=newest` / `order=oldest`: results by the time each line was received, across
//! hosts and files, rather than in storage order. Every generation the search may touch is
//! scanned (the time window prunes what it can), and only the `limit` newest (or oldest)
//! matches are kept, rendered, in a bounded heap: at most `limit` results and
//! [`KEPT_BYTES`] of them, whatever the store holds. Lines stored before lines had a time
//! sort as the oldest.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Mutex, PoisonError};

/// The rendered results one search may hold while it looks for the newest.
pub const KEPT_BYTES: usize = 32 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Host, file, generation, line: streamed as found.
    Storage,
    Newest,
    Oldest,
}

/// The matches kept so far: the best `keep` by time.
#[derive(Debug)]
pub struct Ranked {
    keep: usize,
    oldest_first: bool,
    state: Mutex<Heap>,
}

/// One kept result: its sort key, the order it was found in (earlier first among equal
/// keys), and its rendering.
type Item = (u64, Reverse<u64>, Vec<u8>);

#[derive(Debug, Default)]
struct Heap {
    /// Min-heap on the sort key: the worst kept result is on top, to be dropped first.
    items: BinaryHeap<Reverse<Item>>,
    bytes: usize,
    seq: u64,
    /// Results dropped to stay within [`KEPT_BYTES`] (not for being outside the limit).
    dropped_for_memory: u64,
}

impl Ranked {
    pub fn new(order: Order, keep: u64) -> Self {
        Ranked {
            keep: usize::try_from(keep).unwrap_or(usize::MAX).max(1),
            oldest_first: order == Order::Oldest,
            state: Mutex::default(),
        }
    }

    /// Whether a result received at `ts` would be kept now: checked before rendering it, so
    /// a common word's millions of older matches cost a comparison each, not a JSON object.
    pub fn admits(&self, ts: Option<u64>) -> bool {
        let key = self.key(ts);
        let h = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        h.items.len() < self.keep || h.items.peek().is_some_and(|Reverse((k, _, _))| key > *k)
    }

    fn key(&self, ts: Option<u64>) -> u64 {
        let t = ts.unwrap_or(0);
        if self.oldest_first {
            u64::MAX - t
        } else {
            t
        }
    }

    /// Offers one rendered result received at `ts`.
    pub fn offer(&self, ts: Option<u64>, rendered: Vec<u8>) {
        let key = self.key(ts);
        let mut h = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if h.items.len() >= self.keep {
            // Full: only a better result gets in.
            if h.items.peek().is_some_and(|Reverse((k, _, _))| key <= *k) {
                return;
            }
        }
        let seq = h.seq;
        h.seq += 1;
        h.bytes += rendered.len();
        h.items.push(Reverse((key, Reverse(seq), rendered)));
        while h.items.len() > self.keep || (h.bytes > KEPT_BYTES && h.items.len() > 1) {
            let over_memory = h.items.len() <= self.keep;
            if let Some(Reverse((_, _, r))) = h.items.pop() {
                h.bytes -= r.len();
                if over_memory {
                    h.dropped_for_memory += 1;
                }
            }
        }
    }

    /// The kept results, best first (ties in the order they were found), and how many were
    /// dropped to stay within memory.
    pub fn take(&self) -> (Vec<Vec<u8>>, u64) {
        let mut h = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let dropped = h.dropped_for_memory;
        let mut items: Vec<_> = std::mem::take(&mut h.items)
            .into_iter()
            .map(|Reverse(x)| x)
            .collect();
        h.bytes = 0;
        // Best key first; of equal keys the one found first.
        items.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        (items.into_iter().map(|(_, _, r)| r).collect(), dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(items: Vec<Vec<u8>>) -> Vec<String> {
        items
            .into_iter()
            .map(|b| String::from_utf8(b).expect("utf8"))
            .collect()
    }

    #[test]
    fn the_newest_are_kept_and_come_newest_first() {
        let k = Ranked::new(Order::Newest, 3);
        for (ts, s) in [
            (5, "e"),
            (1, "a"),
            (9, "i"),
            (7, "g"),
            (0, "old"),
            (7, "g2"),
        ] {
            k.offer(Some(ts), s.into());
        }
        let (items, dropped) = k.take();
        assert_eq!(texts(items), vec!["i", "g", "g2"]);
        assert_eq!(dropped, 0);
        let k = Ranked::new(Order::Oldest, 2);
        for (ts, s) in [
            (Some(5), "e"),
            (None, "untimed"),
            (Some(1), "a"),
            (Some(9), "i"),
        ] {
            k.offer(ts, s.into());
        }
        assert_eq!(texts(k.take().0), vec!["untimed", "a"]);
    }

    #[test]
    fn what_is_kept_stays_within_its_memory() {
        let k = Ranked::new(Order::Newest, 1_000);
        for ts in 0..100u64 {
            k.offer(Some(ts), vec![b'x'; KEPT_BYTES / 10]);
        }
        let (items, dropped) = k.take();
        assert!(items.len() <= 10, "{} kept", items.len());
        assert_eq!(dropped, 100 - items.len() as u64);
    }
}
