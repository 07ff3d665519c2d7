//! The embedded default store: a sled index (one tree, three key kinds: see `keys.rs`, the
//! one place the layout is defined) over append-only segment files holding the line buckets
//! (see `segments.rs` for why). Index changes wait in [`Pending`] until the group commit,
//! which applies all of them in one `apply_batch` after the segments' fsync: a generation's
//! metadata and its buckets never disagree after a crash, and sled (which writes and syncs
//! its log on every `apply_batch`) is written once per commit, not once per request.

mod blocks;
mod flusher;
mod keys;
mod open;
mod overlay;
mod pieces;
mod read;
mod scan;
mod seal;
pub(crate) mod segments;
mod sweep;
mod write;

use overlay::Pending;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use logship_wire::FileBatch;

use crate::bucket::{self, LINES_PER_BUCKET};
use crate::{
    BoxFuture, Chunk, FileInfo, GenerationInfo, PhaseLabels, Read, RetentionPolicy, Store,
    StoreError, SweepReport, WriteStats,
};
use flusher::GroupCommit;
use keys::{file_prefix, line_key, parse_file_key, IndexValue, Meta, FILE, HOST, PROBE};
use pieces::Opened;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use segments::{Loc, Segments};
use sweep::SEGMENTS_PER_PASS;

/// Writers to the same generation serialise on one of these (read-merge-write of buckets).
const LOCK_STRIPES: usize = 64;
/// A write is appended and indexed in pieces of about this many bytes of merged buckets…
const APPLY_CHUNK_BYTES: usize = 8 << 20;
/// …or this many buckets, whichever comes first.
const APPLY_CHUNK_BUCKETS: usize = 256;

/// Tuning for the sled store.
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// The memory sled's page cache may take, in bytes of RSS (see
    /// [`SLED_MEMORY_PER_CACHE_BYTE`]); sled's own default (1 GiB) is far more than a log
    /// store needs.
    pub cache_capacity: u64,
    /// How long a file must be quiet before its last, partly filled lines are sealed into a
    /// compressed block (a block's worth is sealed at once); `None` runs no sealer (tests
    /// that seal by hand).
    pub seal_after: Option<std::time::Duration>,
}

/// sled 0.34 counts a cached page at its size on disk, but holds it in memory as a tree node
/// (keys and values behind their own allocations, an LRU entry, the page table's slot), which
/// measured about 3× that: 8, 16 and 32 MiB of sled `cache_capacity` filled to 23, 47 and
/// 100 MiB of RSS under the store's bucket index (17-byte keys, 32-byte values). sled is given
/// the configured capacity divided by this, so `store.cache_capacity` is what the cache
/// costs in memory. (Beyond the cache, sled keeps a stub for every page it paged out, ~17
/// bytes per index entry or ~1 MiB per GB stored; see docs/PERFORMANCE.md.)
pub const SLED_MEMORY_PER_CACHE_BYTE: u64 = 3;

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            cache_capacity: 16 * 1024 * 1024,
            seal_after: Some(std::time::Duration::from_secs(30)),
        }
    }
}

/// The sled-backed [`Store`].
#[derive(Clone)]
pub struct SledStore {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) db: sled::Db,
    pub(super) segments: Arc<Segments>,
    pub(super) commit: Arc<GroupCommit>,
    pub(super) stripes: Vec<Mutex<()>>,
    /// Writers hold it shared from appending data to applying its index entry; a commit
    /// holds it exclusively while it syncs the segments and flushes sled, so a durable
    /// index entry never names data that is not durable yet. Compaction holds it shared only
    /// while it swaps entries to copies it has already fsynced itself.
    pub(super) gate: Arc<std::sync::RwLock<()>>,
    /// Seconds each commit spends waiting for writers, in the segment fsync and in the sled
    /// flush: the parts of a durable ack's latency that are not ours to shorten.
    commit_phases: Family<PhaseLabels, Histogram>,
    /// Segment bytes at the last full sweep; the sweep rescans only after growth or drops.
    pub(super) swept_segment_bytes: std::sync::atomic::AtomicU64,
    /// Index entries written since the last commit, not yet in sled.
    pub(super) pending: Pending,
    /// Segments a sweep is compacting. A writer does not add a piece to a bucket whose
    /// earlier pieces lie in one of them (it rewrites the bucket into the active segment), so
    /// no entry written while compaction moves buckets can keep such a segment alive. Set
    /// under the exclusive gate, so every writer that saw it empty has applied before.
    pub(super) compacting: Mutex<Vec<u32>>,
    /// Segments whose buckets failed to decode when compaction tried to move them: kept on
    /// purpose, not retried at every sweep.
    pub(super) damaged: Mutex<std::collections::HashSet<u32>>,
    /// A sweep kept a compacted segment that is not damaged: the next sweep scans whatever
    /// changed, so the segment is freed however little the store grows meanwhile.
    pub(super) revisit: std::sync::atomic::AtomicBool,
    /// Blocks readers decompressed lately.
    pub(super) blocks: blocks::BlockCache,
    /// What the sealer has yet to look at.
    pub(super) unsealed: Mutex<seal::Unsealed>,
    pub(super) seal_metrics: seal::SealMetrics,
    /// Held by a sweep and by a sealing round: they never run at once (see `seal.rs`).
    pub(super) maintenance: tokio::sync::Mutex<()>,
}

/// What [`Inner::lock_generation`] holds; dropped together.
pub(super) type GenerationLocks<'a> = (
    std::sync::MutexGuard<'a, ()>,
    std::sync::RwLockReadGuard<'a, ()>,
);

/// A commit that applied at least this many index entries gives free heap pages back.
const TRIM_AFTER_ENTRIES: usize = 1024;

pub(super) fn unavailable(e: sled::Error) -> StoreError {
    StoreError::unavailable_by("sled", e)
}

pub(super) fn io_unavailable(e: std::io::Error) -> StoreError {
    StoreError::unavailable_by("disk", e)
}

use crate::clock::{now_ms, to_time};

impl Inner {
    /// A generation as listed: its metadata, and its first stored line (one index seek).
    fn info(&self, name: String, m: Meta) -> Result<GenerationInfo, StoreError> {
        let first_line = match self.db.scan_prefix(&line_key(m.id, 0)[..9]).next() {
            Some(item) => {
                let (k, v) = item.map_err(unavailable)?;
                let bucket = k
                    .get(9..17)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StoreError::corrupt("unreadable index key"))?;
                // The bucket's first present line when its offsets are known (sealed ones:
                // the bucket's start).
                let offset = IndexValue::decode(&v)
                    .and_then(|v| v.present)
                    .map_or(0, |p| u64::from(p.trailing_zeros().min(127)));
                Some(bucket * bucket::LINES_PER_BUCKET + offset)
            }
            None => None,
        };
        Ok(info(name, m, first_line))
    }
}

fn info(name: String, m: Meta, first_line: Option<u64>) -> GenerationInfo {
    GenerationInfo {
        name,
        id: m.id,
        lines: m.lines,
        max_line: m.max_line,
        first_line,
        first_write: to_time(m.first_write_ms),
        last_write: to_time(m.last_write_ms),
    }
}

/// The lock stripe of a generation's metadata key.
fn stripe_of(key: &[u8]) -> usize {
    xxh(key) as usize % LOCK_STRIPES
}

fn xxh(b: &[u8]) -> u64 {
    // Only spreads lock stripes; not persisted, so it may change freely.
    xxhash_rust::xxh3::xxh3_64(b)
}

/// Runs blocking sled work off the async reactor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::unavailable_by("store task failed", e))?
}

impl Store for SledStore {
    fn write<'a>(
        &'a self,
        batches: &'a [FileBatch<'a>],
    ) -> BoxFuture<'a, Result<WriteStats, StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            // block_in_place keeps the borrowed batch usable without copying it into a task.
            // Small writes (an agent's batch) merge inline; large or sparse ones off the worker.
            let lines: usize = batches.iter().map(|b| b.lines.len()).sum();
            let bytes: usize = batches
                .iter()
                .flat_map(|b| &b.lines)
                .map(|l| l.content.len())
                .sum();
            // Each file is its own index batch (and maybe a new generation): many files are
            // large work however few their lines.
            let large =
                lines > 1_500 || bytes > logship_common::offload::INLINE_BYTES || batches.len() > 8;
            let stats = logship_common::offload::offload_if(large, || {
                let mut total = WriteStats::default();
                for fb in batches {
                    total += self.inner.apply(fb, now)?;
                }
                Ok::<_, StoreError>(total)
            })?;
            // Where the request wrote, so the commit can tell one file's pipeline from many
            // agents taking turns.
            let source = batches.first().map_or(0, |b| {
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                h.update(b.host.as_bytes());
                h.update(&[0]);
                h.update(b.file.as_bytes());
                h.digest() | 1
            });
            self.inner.commit.durable(stats.bytes, source).await?;
            Ok(stats)
        })
    }

    fn hosts_page<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let inner = self.inner.clone();
        let mut start = vec![HOST];
        start.extend_from_slice(after.unwrap_or_default().as_bytes());
        let after = after.map(str::to_owned);
        Box::pin(blocking(move || {
            let mut out = Vec::new();
            for item in inner.db.range(start..) {
                let (k, _) = item.map_err(unavailable)?;
                if k.first() != Some(&HOST) || out.len() >= limit {
                    break;
                }
                let host = String::from_utf8(k[1..].to_vec())
                    .map_err(|_| StoreError::corrupt("host key is not UTF-8"))?;
                if after.as_deref() != Some(host.as_str()) {
                    out.push(host);
                }
            }
            Ok(out)
        }))
    }

    fn files_page<'a>(
        &'a self,
        host: Option<&'a str>,
        after: Option<(&'a str, &'a str)>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<FileInfo>, StoreError>> {
        let inner = self.inner.clone();
        let host = host.map(str::to_owned);
        let after = after.map(|(h, f)| (h.to_owned(), f.to_owned()));
        Box::pin(blocking(move || {
            let after = after.as_ref().map(|(h, f)| (h.as_str(), f.as_str()));
            inner.files(host.as_deref(), after, limit)
        }))
    }

    fn generations<'a>(
        &'a self,
        host: &'a str,
        file: &'a str,
    ) -> BoxFuture<'a, Result<Vec<GenerationInfo>, StoreError>> {
        let inner = self.inner.clone();
        let (host, file) = (host.to_owned(), file.to_owned());
        Box::pin(blocking(move || inner.generations(&host, &file)))
    }

    fn read_chunk(
        &self,
        id: u64,
        from: u64,
        to: u64,
        max_bytes: usize,
        contiguous: bool,
        numbered: bool,
    ) -> BoxFuture<'_, Result<Chunk, StoreError>> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || {
            inner.read_chunk(
                id,
                &Read::download(from, to, max_bytes, contiguous, numbered),
            )
        }))
    }

    fn search_chunk(
        &self,
        id: u64,
        from: u64,
        max_bytes: usize,
        window: Option<(u64, u64)>,
    ) -> BoxFuture<'_, Result<Chunk, StoreError>> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || {
            inner.read_chunk(id, &Read::search(from, u64::MAX >> 16, max_bytes, window))
        }))
    }

    fn scan_blocking(
        &self,
        id: u64,
        window: Option<(u64, u64)>,
        must_contain: Option<&[u8]>,
        visit: &mut crate::Visitor<'_>,
    ) -> Option<Result<u64, StoreError>> {
        Some(self.inner.scan(id, window, must_contain, visit))
    }

    fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0) + self.inner.segments.size()
    }

    /// Writes a probe key to the index and checks the active segment is still there.
    fn ready(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || {
            inner
                .db
                .insert(PROBE, &now_ms().to_be_bytes()[..])
                .map_err(unavailable)?;
            inner.segments.check().map_err(io_unavailable)
        }))
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.inner.commit.durable_now().await })
    }

    fn sweep(
        &self,
        policy: RetentionPolicy,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<SweepReport, StoreError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let _maintenance = inner.maintenance.lock().await;
            let now = crate::clock::millis(now);
            let i = inner.clone();
            let (candidates, mut report) = blocking(move || {
                let mut report = SweepReport::default();
                let candidates = i.retire(policy, now, &mut report)?;
                Ok((candidates, report))
            })
            .await?;
            if candidates.is_empty() {
                return Ok(report);
            }
            // Whatever happens below (an error, a cancelled sweep), writers stop rewriting.
            struct Compacting(Arc<Inner>);
            impl Drop for Compacting {
                fn drop(&mut self) {
                    self.0.stop_compacting();
                }
            }
            let _compacting = Compacting(inner.clone());
            // Writers that appended to a segment just closed apply their index entries
            // before it is scanned: a commit waits for them.
            inner.commit.durable_now().await?;
            let passes = candidates.len().div_ceil(SEGMENTS_PER_PASS);
            for (n, group) in candidates.chunks(SEGMENTS_PER_PASS).enumerate() {
                let (i, g) = (inner.clone(), group.to_vec());
                let moved = blocking(move || i.move_live(&g)).await?;
                // Durable copies, and no writer still holding a location in these segments.
                inner.commit.durable_now().await?;
                let (i, g) = (inner.clone(), group.to_vec());
                let (count, freed) = blocking(move || i.remove_unreferenced(&g)).await?;
                report.segments_compacted += count;
                report.bytes_moved += moved;
                report.bytes_reclaimed += freed.saturating_sub(moved);
                tracing::info!(
                    segments = ?group,
                    progress = format!("{}/{passes}", n + 1),
                    moved_bytes = moved,
                    freed_bytes = freed,
                    "compacted segments"
                );
            }
            // Growth is measured from what compaction left.
            inner
                .swept_segment_bytes
                .store(inner.segments.size(), std::sync::atomic::Ordering::SeqCst);
            Ok(report)
        })
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "store_commit_phase_seconds",
            "Time each group commit spends per phase: waiting for writers, segment fsync, index flush",
            self.inner.commit_phases.clone(),
        );
        registry.register(
            "store_segment_appended_bytes",
            "Bytes appended to the segment files (merged buckets, pieces, compaction's copies): against aggregator_bytes_received_total, the store's write amplification",
            self.inner.segments.appended.clone(),
        );
        let m = &self.inner.seal_metrics;
        for (name, help, counter) in [
            ("store_sealed_blocks", "Compressed blocks the sealer wrote", &m.blocks),
            ("store_sealed_buckets", "Buckets of 128 line numbers sealed into compressed blocks", &m.buckets),
            ("store_sealed_raw_bytes", "Raw bytes of the buckets sealed (before compression)", &m.raw_bytes),
            ("store_sealed_stored_bytes", "Bytes the sealed blocks take (after compression): against store_sealed_raw_bytes_total, the compression ratio", &m.stored_bytes),
            ("store_seal_failures", "Sealing rounds or generations that failed (retried)", &m.failures),
            ("store_corrupt_blocks", "Reads of a compressed block that did not decompress (damaged on disk); the log names the generation and line", &m.corrupt),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "store_seal_waiting_bytes",
            "Raw bytes not yet sealed at the last sealing round (the sealing lag): a live file's partly filled lines, or everything while the sealer catches up",
            m.waiting_bytes.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use logship_wire::Line;

    use super::*;

    fn batch<'a>(generation: &'a str, lines: &[(u64, &'a str)]) -> FileBatch<'a> {
        FileBatch {
            host: Cow::Borrowed("h"),
            file: Cow::Borrowed("/var/log/x"),
            generation: Cow::Borrowed(generation),
            lines: lines
                .iter()
                .map(|&(number, s)| Line {
                    number,
                    content: Cow::Borrowed(s.as_bytes()),
                    partial: false,
                    ts: None,
                })
                .collect(),
        }
    }

    async fn read_all(store: &SledStore, id: u64) -> String {
        let mut out = Vec::new();
        let mut from = 0;
        loop {
            let c = store
                .read_chunk(id, from, u64::MAX >> 16, 10, false, false)
                .await
                .expect("read");
            out.extend_from_slice(&c.data);
            match c.next {
                Some(n) => from = n,
                None => break,
            }
        }
        String::from_utf8(out).expect("utf8")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn out_of_order_resends_across_buckets_read_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), &SledOptions::default()).expect("open");
        let lines: Vec<(u64, String)> = (0..400).map(|i| (i, format!("line {i}"))).collect();
        let refs: Vec<(u64, &str)> = lines.iter().map(|(n, s)| (*n, s.as_str())).collect();
        let (a, b) = refs.split_at(250);
        store.write(&[batch("g1", b)]).await.expect("write");
        let s = store.write(&[batch("g1", a)]).await.expect("write");
        assert_eq!(s.new_lines, 250);
        let s = store.write(&[batch("g1", &refs)]).await.expect("resend");
        assert_eq!(s.new_lines, 0, "a resend adds nothing");
        store
            .write(&[batch("g1", &[(5, "five, rewritten")])])
            .await
            .expect("overwrite");
        let gens = store.generations("h", "/var/log/x").await.expect("gens");
        assert_eq!(gens.len(), 1);
        assert_eq!((gens[0].lines, gens[0].max_line), (400, 399));
        let expected: String = (0..400)
            .map(|i| {
                if i == 5 {
                    "five, rewritten\n".to_owned()
                } else {
                    format!("line {i}\n")
                }
            })
            .collect();
        assert_eq!(read_all(&store, gens[0].id).await, expected);
    }

    /// `store.cache_capacity = "0"` (or under 3 bytes) once reached sled as a zero capacity,
    /// which sled 0.34 asserts against at open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tiny_cache_capacity_still_opens_and_stores() {
        for cache_capacity in [0, 1, 100] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = SledStore::open(
                dir.path(),
                &SledOptions {
                    cache_capacity,
                    ..SledOptions::default()
                },
            )
            .expect("open");
            store
                .write(&[batch("g1", &[(0, "a"), (1, "b")])])
                .await
                .expect("write");
            let gens = store.generations("h", "/var/log/x").await.expect("gens");
            assert_eq!(
                read_all(&store, gens[0].id).await,
                "a\nb\n",
                "{cache_capacity}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn generations_are_separate_and_ordered_by_creation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), &SledOptions::default()).expect("open");
        store
            .write(&[batch("zzz-old", &[(0, "old")])])
            .await
            .expect("write");
        store
            .write(&[batch("aaa-new", &[(0, "new")])])
            .await
            .expect("write");
        let gens = store.generations("h", "/var/log/x").await.expect("gens");
        let names: Vec<&str> = gens.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, vec!["zzz-old", "aaa-new"]);
        assert_eq!(read_all(&store, gens[0].id).await, "old\n");
        assert_eq!(read_all(&store, gens[1].id).await, "new\n");
        assert_eq!(store.hosts().await.expect("hosts"), vec!["h".to_owned()]);
        let files = store.files(Some("h")).await.expect("files");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].generations.len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sparse_writes_apply_in_chunks_and_big_buckets_read_in_small_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path(), &SledOptions::default()).expect("open");
        // 1,000 lines 128 apart: 1,000 buckets, several index batches.
        let sparse: Vec<(u64, String)> = (0..1_000).map(|i| (i * 128, format!("s{i}"))).collect();
        let refs: Vec<(u64, &str)> = sparse.iter().map(|(n, s)| (*n, s.as_str())).collect();
        let s = store.write(&[batch("sparse", &refs)]).await.expect("write");
        assert_eq!(s.new_lines, 1_000);
        let g = store.generations("h", "/var/log/x").await.expect("gens");
        assert_eq!((g[0].lines, g[0].max_line), (1_000, 999 * 128));
        let want: String = sparse.iter().map(|(_, s)| format!("{s}\n")).collect();
        assert_eq!(read_all(&store, g[0].id).await, want);
        // One bucket of 128 lines of 64 KiB (8 MiB) is served in chunks of about 256 KiB.
        let big: Vec<(u64, String)> = (0..128)
            .map(|i| (i, format!("{i:03}{}", "b".repeat(65_533))))
            .collect();
        let refs: Vec<(u64, &str)> = big.iter().map(|(n, s)| (*n, s.as_str())).collect();
        store.write(&[batch("big", &refs)]).await.expect("write");
        let id = store.generations("h", "/var/log/x").await.expect("gens")[1].id;
        let (mut from, mut out, mut chunks) = (0, Vec::new(), 0);
        loop {
            let c = store
                .read_chunk(id, from, u64::MAX >> 16, 256 << 10, false, true)
                .await
                .expect("read");
            assert!(
                c.data.len() <= (256 << 10) + 65_537,
                "chunk of {} bytes",
                c.data.len()
            );
            if let Some(first) = c.lines.first() {
                assert_eq!((first.number, first.start), (from, 0));
            }
            assert!(c
                .lines
                .windows(2)
                .all(|w| w[1].number == w[0].number + 1 && w[1].start == w[0].start + 65_537));
            out.extend_from_slice(&c.data);
            chunks += 1;
            match c.next {
                Some(n) => from = n,
                None => break,
            }
        }
        let want: String = big.iter().map(|(_, s)| format!("{s}\n")).collect();
        assert_eq!(String::from_utf8(out).expect("utf8"), want);
        assert!(chunks >= 30, "{chunks} chunks");
    }

    #[test]
    fn file_keys_round_trip_with_awkward_names() {
        let mut k = file_prefix("h\u{e9}", Some("/a/\u{1F600}"));
        k.extend_from_slice(b"gen");
        assert_eq!(
            parse_file_key(&k),
            Some(("h\u{e9}".into(), "/a/\u{1F600}".into(), "gen".into()))
        );
    }
}
