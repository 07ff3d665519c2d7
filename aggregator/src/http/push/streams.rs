//! Line numbers and resend detection for pushed streams, which carry neither.
//!
//! Each stream (host + file) has a state behind its own async lock, held by a push from
//! numbering its lines until the store acknowledged them: two pushes of one stream are
//! numbered one after the other, and a failed write leaves the numbers unused.
//!
//! The state remembers a hash of (time, line) for the stream's last `dedup_lines` lines; an
//! entry whose pair is among them is a resend and is not stored again (as Loki drops an entry
//! identical in stream, time and line). It is rebuilt exactly from the store the first time
//! a stream pushes after a start or after it was forgotten, so the guarantee holds across
//! restarts. All windows together stay under `dedup_memory`: past it the least recently
//! pushed streams are forgotten.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use logship_store::{Store, StoreError};

/// Bytes one remembered line costs: its hash in the ring and in the count map.
pub const BYTES_PER_LINE: usize = 32;

/// A stream's identity in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub host: String,
    pub file: String,
}

/// The hash of one entry: its time (ms, 0 for none) and its bytes.
pub fn entry_hash(ts_ms: u64, line: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(line, ts_ms)
}

/// The hashes are xxh3 already: the map uses them as they are.
#[derive(Default)]
pub struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One stream's numbering and resend window.
pub struct State {
    /// Whether `next` and the window were read from the store yet.
    loaded: bool,
    /// The number the next line gets.
    pub next: u64,
    ring: VecDeque<u64>,
    counts: HashMap<u64, u32, BuildHasherDefault<Identity>>,
    /// Lines remembered by every stream, for the memory bound.
    held: Arc<AtomicUsize>,
}

impl State {
    fn new(held: Arc<AtomicUsize>) -> Self {
        State {
            loaded: false,
            next: 0,
            ring: VecDeque::new(),
            counts: HashMap::default(),
            held,
        }
    }

    /// Reads the stream's end and its last `window` lines from the store, once.
    pub async fn load(
        &mut self,
        store: &dyn Store,
        key: &StreamKey,
        generation: &str,
        window: usize,
    ) -> Result<(), StoreError> {
        if self.loaded {
            return Ok(());
        }
        let gens = store.generations(&key.host, &key.file).await?;
        if let Some(g) = gens.iter().find(|g| g.name == generation && g.lines > 0) {
            let next = g.max_line + 1;
            let mut from = next.saturating_sub(window as u64);
            loop {
                let chunk = store
                    .read_chunk(g.id, from, next - 1, 4 << 20, false, true)
                    .await?;
                for (i, l) in chunk.lines.iter().enumerate() {
                    self.remember(entry_hash(l.ts.unwrap_or(0), chunk.line(i)), window);
                }
                match chunk.next {
                    Some(n) => from = n,
                    None => break,
                }
            }
            self.next = next;
        }
        self.loaded = true;
        Ok(())
    }

    /// Whether an entry with this hash was stored among the last lines; if so it is taken
    /// off the count, so a push holding one pair twice stores it twice once and never again.
    pub fn seen(&mut self, hash: u64) -> bool {
        match self.counts.get_mut(&hash) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    /// Adds a stored line's hash, forgetting the oldest past `window`.
    pub fn remember(&mut self, hash: u64, window: usize) {
        if window == 0 {
            return;
        }
        self.ring.push_back(hash);
        *self.counts.entry(hash).or_default() += 1;
        self.held.fetch_add(1, Ordering::Relaxed);
        while self.ring.len() > window {
            self.forget_oldest();
        }
    }

    /// After a push, stored or not: puts back the counts [`seen`](Self::seen) took (the
    /// pairs are still among the last lines), so a third copy of a push is dropped too.
    pub fn restore(&mut self, hashes: &[u64]) {
        for h in hashes {
            *self.counts.entry(*h).or_default() += 1;
        }
    }

    fn forget_oldest(&mut self) {
        if let Some(old) = self.ring.pop_front() {
            if let Some(n) = self.counts.get_mut(&old) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.counts.remove(&old);
                }
            }
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.held.fetch_sub(self.ring.len(), Ordering::Relaxed);
    }
}

struct Slot {
    state: Arc<tokio::sync::Mutex<State>>,
    used: u64,
}

/// Every stream pushed to lately.
#[derive(Default)]
pub struct Streams {
    map: std::sync::Mutex<(HashMap<StreamKey, Slot>, u64)>,
    held: Arc<AtomicUsize>,
}

impl Streams {
    /// The state of `key` (created unloaded if new); first forgets the least recently used
    /// idle streams while all windows hold more than `max_bytes`.
    pub fn get(&self, key: &StreamKey, max_bytes: u64) -> Arc<tokio::sync::Mutex<State>> {
        let mut guard = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (map, tick) = &mut *guard;
        *tick += 1;
        let now = *tick;
        let over = |held: &AtomicUsize, streams: usize| {
            // Each stream's own structures count too, so many tiny streams are bounded.
            (held.load(Ordering::Relaxed) * BYTES_PER_LINE + streams * 256) as u64 > max_bytes
        };
        if over(&self.held, map.len()) {
            let mut idle: Vec<(u64, StreamKey)> = map
                .iter()
                .filter(|(_, s)| Arc::strong_count(&s.state) == 1)
                .map(|(k, s)| (s.used, k.clone()))
                .collect();
            idle.sort_unstable();
            for (_, k) in idle {
                if !over(&self.held, map.len()) {
                    break;
                }
                map.remove(&k);
            }
        }
        let slot = map.entry(key.clone()).or_insert_with(|| Slot {
            state: Arc::new(tokio::sync::Mutex::new(State::new(self.held.clone()))),
            used: now,
        });
        slot.used = now;
        slot.state.clone()
    }

    /// Streams remembered now (metrics and tests).
    pub fn streams_held(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .len()
    }

    /// Lines remembered by all streams.
    pub fn lines_held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resent_pair_is_seen_as_often_as_it_was_stored() {
        let streams = Streams::default();
        let key = StreamKey {
            host: "h".into(),
            file: "f".into(),
        };
        let state = streams.get(&key, 1 << 20);
        let mut s = state.try_lock().expect("free");
        let (a, b) = (entry_hash(1, b"x"), entry_hash(2, b"x"));
        s.remember(a, 3);
        s.remember(a, 3);
        s.remember(b, 3);
        assert!(
            s.seen(a) && s.seen(a) && !s.seen(a),
            "stored twice, seen twice"
        );
        s.restore(&[a, a]);
        assert!(s.seen(a), "restored after the push");
        s.restore(&[a]);
        // Past the window the oldest are forgotten.
        s.remember(entry_hash(3, b"y"), 3);
        s.remember(entry_hash(4, b"y"), 3);
        assert!(!s.seen(a) || !s.seen(a), "one copy of a left the window");
        assert_eq!(streams.lines_held(), 3);
    }

    #[test]
    fn idle_streams_are_forgotten_past_the_memory_bound() {
        let streams = Streams::default();
        for i in 0..100 {
            let key = StreamKey {
                host: "h".into(),
                file: format!("f{i}"),
            };
            let state = streams.get(&key, 64 * 1024);
            let mut s = state.try_lock().expect("free");
            for n in 0..100 {
                s.remember(entry_hash(n, b"line"), 1000);
            }
        }
        let held = streams.lines_held() * BYTES_PER_LINE + streams.streams_held() * 256;
        assert!(
            held <= 64 * 1024 + 100 * BYTES_PER_LINE + 256,
            "{held} bytes held"
        );
        assert!(streams.streams_held() < 100);
    }
}
