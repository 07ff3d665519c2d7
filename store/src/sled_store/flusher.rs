//! Group commit: one task runs the store's flush; every writer waits for the first flush
//! that started after its write.
//!
//! Concurrent `flush_async` calls can deadlock in sled 0.34 (sled issue 1308), so a single
//! flusher is both the fix and what makes durability cheap: one fsync covers every request
//! that arrived while the previous one ran.
//!
//! When commits follow each other closely and the last one covered more than one writer, the
//! next waits for more writers while they keep arriving: until none has come for [`QUIET`]
//! ([`QUIET_MANY`] after a commit of many writers), [`COMMIT_BYTES`] wait, or
//! [`MAX_COMMIT_DELAY`] has passed. A commit costs about half a millisecond of CPU (fsync, a
//! sled batch and flush, sled's thread hand-offs) whatever it carries, so a fleet of agents
//! sending 30 lines each paid for ~270 commits a second at 100k lines/s; with a 1 ms gap ~140
//! (at 2,860 requests/s a 1 ms gap between random arrivals is common), with 3 ms after a
//! commit of 8 or more writers ~85–90, the same as 1,000-line batches at that rate. A writer
//! that had the last commit to itself is not made to wait at all when it is one of a few
//! files' pipelines, and a few writers commit after a short gap: they are likely all in (a
//! 3 ms gap for them cut one file's pipeline from ~570k to ~360k lines/s). Measured
//! (`logship-bench --scenarios system --files 1`): a fixed 2 ms wait (the rule before)
//! 522–531k lines/s; a fixed 10 ms wait 165k; a 2 ms quiet gap 419–423k (tokio's timer
//! rounds sleeps up to whole milliseconds); this rule 560–626k.
//!
//! Many agents taking turns at a few hundred requests a second also leave one writer per
//! commit, but there each commit saved is CPU: when the last 32 writers wrote to 8 or more
//! different files, the commit waits as after a commit of many writers (500 agents sending
//! 100–300 lines a request ran ~425 commits a second, one per request).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::StoreError;

/// State published after each flush.
#[derive(Debug, Clone, Copy, Default)]
struct Flushed {
    /// Number of the last completed flush.
    done: u64,
    /// Whether that flush succeeded.
    ok: bool,
}

/// Handle shared by writers; the flusher task owns the other end.
#[derive(Debug)]
pub struct GroupCommit {
    /// Number the next flush to start will carry.
    next: AtomicU64,
    /// Shared with the flusher task, which must not hold the `GroupCommit` itself while it
    /// waits: it ends (and lets go of the store) once the last handle is dropped.
    wake: Arc<Notify>,
    done: watch::Receiver<Flushed>,
    /// Bytes written by the writers waiting for the next commit…
    waiting_bytes: Arc<AtomicU64>,
    /// …and how many they are.
    waiting_writers: Arc<AtomicU64>,
    /// Where the last [`SOURCES`] writers wrote (a hash of host and file; 0 for none): whether
    /// commits of one writer are one file's pipeline or many agents taking turns.
    sources: Arc<Sources>,
}

/// Writers remembered by [`Sources`].
const SOURCES: usize = 32;

/// A ring of the last [`SOURCES`] writers' sources, written without a lock.
#[derive(Debug, Default)]
struct Sources {
    next: AtomicUsize,
    ring: [AtomicU64; SOURCES],
}

impl Sources {
    fn push(&self, source: u64) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % SOURCES;
        self.ring[i].store(source, Ordering::Relaxed);
    }

    /// How many different sources the remembered writers had.
    fn distinct(&self) -> usize {
        let mut seen: [u64; SOURCES] =
            std::array::from_fn(|i| self.ring[i].load(Ordering::Relaxed));
        seen.sort_unstable();
        let mut n = 0;
        let mut last = 0;
        for s in seen {
            if s != 0 && s != last {
                n += 1;
                last = s;
            }
        }
        n
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// Commits closer together than this wait for more writers.
const RECENT: std::time::Duration = std::time::Duration::from_millis(8);
/// A commit that waits for writers starts once none has arrived for this long (after a
/// commit of a few writers: they are likely all in)…
const QUIET: std::time::Duration = std::time::Duration::from_millis(1);
/// …or for this long after a commit of [`MANY_WRITERS`] or more (a fleet's arrivals are
/// random, and at ~3 a millisecond a 1 ms gap between them came often enough to end half the
/// waits early)…
const QUIET_MANY: std::time::Duration = std::time::Duration::from_millis(3);
/// Writers in one commit, or different sources among the last [`SOURCES`] writers, that make
/// the wait [`QUIET_MANY`].
const MANY_WRITERS: u64 = 8;
/// …or [`COMMIT_BYTES`] wait, and at the latest this long after the first writer (an ack's
/// added latency under a stream of small requests; the target is a p99 under 50 ms).
const MAX_COMMIT_DELAY: std::time::Duration = std::time::Duration::from_millis(10);
/// Data enough to be worth a commit of its own.
const COMMIT_BYTES: u64 = 512 * 1024;

/// What one commit does (fsync the segments, flush sled).
pub type FlushFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

impl GroupCommit {
    /// Starts the flusher task running `flush`.
    pub fn start(flush: FlushFn) -> Arc<Self> {
        let (tx, rx) = watch::channel(Flushed { done: 0, ok: true });
        let wake = Arc::new(Notify::new());
        let waiting_bytes = Arc::new(AtomicU64::new(0));
        let waiting_writers = Arc::new(AtomicU64::new(0));
        let sources = Arc::new(Sources::default());
        let gc = Arc::new(GroupCommit {
            next: AtomicU64::new(1),
            wake: wake.clone(),
            done: rx,
            waiting_bytes: waiting_bytes.clone(),
            waiting_writers: waiting_writers.clone(),
            sources: sources.clone(),
        });
        let weak = Arc::downgrade(&gc);
        tokio::spawn(async move {
            let mut last_flush = std::time::Instant::now() - RECENT;
            // Writers the previous commit covered.
            let mut last_writers = 0;
            loop {
                wake.notified().await;
                // Under a stream of small requests (a fleet of agents), wait while more
                // writers keep joining this commit: one fsync and one index flush then cover
                // dozens of requests instead of a few. Every writer's `durable` wakes us. A
                // writer that had the last commit to itself is alone again when it is one
                // file's pipeline (its next batch waits for this ack): waiting would only slow
                // it down. But many agents taking turns at a few hundred requests a second
                // also leave one writer per commit, and there every commit saved is CPU:
                // the last writers' sources tell the two apart.
                let many_sources = sources.distinct() >= MANY_WRITERS as usize;
                if last_flush.elapsed() < RECENT && (last_writers > 1 || many_sources) {
                    let until = tokio::time::Instant::now() + MAX_COMMIT_DELAY;
                    let quiet = if last_writers >= MANY_WRITERS || many_sources {
                        QUIET_MANY
                    } else {
                        QUIET
                    };
                    while waiting_bytes.load(Ordering::SeqCst) < COMMIT_BYTES {
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => break,
                            _ = tokio::time::sleep(quiet) => break,
                            _ = wake.notified() => {}
                        }
                    }
                }
                let Some(gc) = weak.upgrade() else { return };
                // Writers that read `next` before this increment are covered by this flush;
                // later ones wait for the next.
                let number = gc.next.fetch_add(1, Ordering::SeqCst);
                waiting_bytes.store(0, Ordering::SeqCst);
                last_writers = waiting_writers.swap(0, Ordering::SeqCst);
                drop(gc);
                let flush = flush.clone();
                let ok = match tokio::task::spawn_blocking(move || flush()).await {
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "store flush failed");
                        false
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store flush task failed");
                        false
                    }
                };
                last_flush = std::time::Instant::now();
                if tx.send(Flushed { done: number, ok }).is_err() {
                    return;
                }
            }
        });
        gc
    }

    /// [`durable`](Self::durable) without waiting for other writers to join the commit.
    pub async fn durable_now(&self) -> Result<(), StoreError> {
        self.durable(COMMIT_BYTES, 0).await
    }

    /// Resolves once everything written before this call is on disk; `bytes` is what the
    /// caller wrote (it decides how long the commit waits for others), `source` a hash of
    /// where (host and file; 0 for none), which tells one file's pipeline from many agents.
    pub async fn durable(&self, bytes: u64, source: u64) -> Result<(), StoreError> {
        self.sources.push(source);
        self.waiting_bytes.fetch_add(bytes, Ordering::SeqCst);
        self.waiting_writers.fetch_add(1, Ordering::SeqCst);
        let ticket = self.next.load(Ordering::SeqCst);
        let mut rx = self.done.clone();
        // `notify_one` stores a permit if the flusher is busy, so no wake-up is lost.
        self.wake.notify_one();
        let state = rx
            .wait_for(|f| f.done >= ticket)
            .await
            .map_err(|_| StoreError::unavailable("flusher stopped"))?;
        if state.ok {
            Ok(())
        } else {
            Err(StoreError::unavailable("flushing to disk failed"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_writers_share_flushes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("open");
        let db2 = db.clone();
        let gc = GroupCommit::start(Arc::new(move || {
            db2.flush().map(|_| ()).map_err(|e| e.to_string())
        }));
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let (gc, db) = (gc.clone(), db.clone());
            tasks.push(tokio::spawn(async move {
                db.insert(i.to_be_bytes(), &b"v"[..]).expect("insert");
                gc.durable(1, u64::from(i) + 1).await
            }));
        }
        for t in tasks {
            t.await.expect("join").expect("durable");
        }
        let flushes = gc.next.load(Ordering::SeqCst) - 1;
        assert!(
            (1..64).contains(&flushes),
            "{flushes} flushes for 64 writers"
        );
    }

    /// A group commit whose flush only counts.
    fn counting() -> (Arc<GroupCommit>, Arc<AtomicU64>) {
        let flushes = Arc::new(AtomicU64::new(0));
        let f = flushes.clone();
        let gc = GroupCommit::start(Arc::new(move || {
            f.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }));
        (gc, flushes)
    }

    /// Many agents taking turns, one request every 2 ms, each request alone in the commit
    /// it joins: they used to get a commit each (one fsync per request at 500 requests/s).
    /// The clock is tokio's paused one, so the arrival times are exact.
    #[tokio::test(start_paused = true)]
    async fn many_agents_taking_turns_share_commits() {
        let (gc, flushes) = counting();
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for i in 0..100u64 {
            let gc = gc.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(start + std::time::Duration::from_millis(2 * i)).await;
                let asked = tokio::time::Instant::now();
                gc.durable(100, i + 1).await.expect("durable");
                asked.elapsed()
            }));
        }
        let mut slowest = std::time::Duration::ZERO;
        for t in tasks {
            slowest = slowest.max(t.await.expect("join"));
        }
        let n = flushes.load(Ordering::SeqCst);
        assert!(n <= 40, "{n} commits for 100 requests from 100 agents");
        assert!(
            slowest <= MAX_COMMIT_DELAY + std::time::Duration::from_millis(2),
            "an ack waited {slowest:?}"
        );
    }

    /// One file's pipeline (its next batch waits for the last ack) is never made to wait
    /// for writers that will not come; a few files' pipelines wait at most the short gap.
    #[tokio::test(start_paused = true)]
    async fn a_few_pipelines_are_not_held_back() {
        for (files, allowed) in [(1u64, std::time::Duration::ZERO), (4, QUIET)] {
            let (gc, flushes) = counting();
            let mut tasks = Vec::new();
            for f in 0..files {
                let gc = gc.clone();
                tasks.push(tokio::spawn(async move {
                    let mut slowest = std::time::Duration::ZERO;
                    for _ in 0..50 {
                        let asked = tokio::time::Instant::now();
                        gc.durable(100, f + 1).await.expect("durable");
                        slowest = slowest.max(asked.elapsed());
                    }
                    slowest
                }));
            }
            for t in tasks {
                let slowest = t.await.expect("join");
                assert!(
                    slowest <= allowed,
                    "{files} pipelines: an ack waited {slowest:?} ({} commits)",
                    flushes.load(Ordering::SeqCst)
                );
            }
        }
    }
}
