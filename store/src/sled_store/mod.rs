//! The embedded default store: a sled index (one tree, three key kinds: see `keys.rs`, the
//! one place the layout is defined) over append-only segment files holding the line buckets
//! (see `segments.rs` for why). Index changes wait in [`Pending`] until the group commit,
//! which applies all of them in one `apply_batch` after the segments' fsync: a generation's
//! metadata and its buckets never disagree after a crash, and sled (which writes and syncs
//! its log on every `apply_batch`) is written once per commit, not once per request.

mod flusher;
mod keys;
mod pieces;
pub(crate) mod segments;
mod sweep;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
}

/// What [`Inner::lock_generation`] holds; dropped together.
pub(super) type GenerationLocks<'a> = (
    std::sync::MutexGuard<'a, ()>,
    std::sync::RwLockReadGuard<'a, ()>,
);

/// A commit that applied at least this many index entries gives free heap pages back.
const TRIM_AFTER_ENTRIES: usize = 1024;

/// Index entries writers read before sled: those written since the last commit, and the
/// last few thousand committed ones. Readers see sled only, which holds everything
/// acknowledged: an ack waits for the commit that applies the pending entries.
///
/// Pending: one sled `apply_batch` per commit instead of one per request (sled 0.34 rolls,
/// writes and `sync_file_range`s its log buffer on every batch). Recent: the same values sled
/// has, kept because the next write to a file reads its generation's metadata and last
/// bucket again — sled point reads were 6 % of the aggregator's CPU under a fleet of agents.
/// Anything that changes sled other than a commit (a retention drop, compaction) forgets
/// the recent entries ([`Inner::forget_recent`]) before it lets writers near them again.
#[derive(Default)]
pub(super) struct Overlay {
    pending: HashMap<Vec<u8>, Vec<u8>>,
    recent: HashMap<Vec<u8>, Vec<u8>>,
    older: HashMap<Vec<u8>, Vec<u8>>,
}

/// `Overlay::recent` moves to `older` (and the old `older` goes) past this many entries.
const RECENT_ENTRIES: usize = 4096;

impl Overlay {
    fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.pending
            .get(key)
            .or_else(|| self.recent.get(key))
            .or_else(|| self.older.get(key))
    }

    /// Remembers entries a commit has just applied to sled.
    fn committed(&mut self, entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) {
        for (k, v) in entries {
            if self.recent.len() >= RECENT_ENTRIES {
                self.older = std::mem::take(&mut self.recent);
            }
            self.recent.insert(k, v);
        }
    }
}

pub(super) type Pending = Arc<Mutex<Overlay>>;

pub(super) fn unavailable(e: sled::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(super) fn io_unavailable(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn to_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl SledStore {
    /// Opens (or creates) the store in `dir` and starts its group-commit flusher.
    pub fn open(dir: &Path, opts: &SledOptions) -> Result<Self, StoreError> {
        let segments = Arc::new(Segments::open(&dir.join("segments")).map_err(io_unavailable)?);
        let db = sled::Config::new()
            .path(dir.join("index"))
            // sled asserts its cache is not empty; a tiny setting gets 1 MiB.
            .cache_capacity((opts.cache_capacity / SLED_MEMORY_PER_CACHE_BYTE).max(1 << 20))
            // Our group commit flushes on every durable write; a second, timed flusher only
            // competes with it for the log (seen as multi-second ack stalls).
            .flush_every_ms(None)
            .open()
            .map_err(unavailable)?;
        // sled's flush only `sync_file_range`s its log: the pages reach the disk, but neither
        // the file's new size nor the disk's write cache is made durable, so after a power
        // cut the index could lose entries whose lines were acknowledged (and compaction
        // would then reclaim those lines as garbage). The commit fsyncs the log itself.
        let index_log =
            std::fs::File::open(dir.join("index").join("db")).map_err(io_unavailable)?;
        let gate = Arc::new(std::sync::RwLock::new(()));
        let commit_phases = Family::<PhaseLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        let pending: Pending = Arc::default();
        let commit = {
            let (db, segments, gate) = (db.clone(), segments.clone(), gate.clone());
            let pending = pending.clone();
            let phases = commit_phases.clone();
            GroupCommit::start(Arc::new(move || {
                let t = std::time::Instant::now();
                let _exclusive = gate
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let locked = t.elapsed();
                // Writers hold the gate shared from reading the index to adding their
                // entries, so these are complete; the data they name is fsynced before sled
                // gets them.
                let lock = || {
                    pending
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                };
                let entries = std::mem::take(&mut lock().pending);
                segments.sync().map_err(|e| e.to_string())?;
                let synced = t.elapsed();
                let applied = entries.len();
                if !entries.is_empty() {
                    // In key order, straight from the map: building a `sled::Batch` (a
                    // hash map grown entry by entry) was 5 % of the aggregator's CPU under a
                    // fleet of small agents.
                    let mut sorted: Vec<(&[u8], &[u8])> =
                        entries.iter().map(|(k, v)| (&k[..], &v[..])).collect();
                    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
                    db.apply_entries(sorted).map_err(|e| e.to_string())?;
                }
                // Remembered as soon as sled has them (a failed flush below leaves them in
                // sled too), so the overlay never holds a value older than sled's. Still under
                // the exclusive gate: no drop or compaction can come in between.
                lock().committed(entries);
                db.flush().map(|_| ()).map_err(|e| e.to_string())?;
                index_log.sync_data().map_err(|e| e.to_string())?;
                if applied >= TRIM_AFTER_ENTRIES {
                    // A large commit allocated on this (blocking-pool) thread's own heap;
                    // glibc keeps what it freed there unless asked.
                    logship_common::trim_free_memory();
                }
                let total = t.elapsed();
                for (phase, d) in [
                    ("wait_for_writers", locked),
                    ("segments_fsync", synced - locked),
                    ("index_flush", total - synced),
                ] {
                    phases
                        .get_or_create(&PhaseLabels { phase })
                        .observe(d.as_secs_f64());
                }
                if total > std::time::Duration::from_millis(100) {
                    tracing::debug!(?locked, ?synced, ?total, "slow commit");
                }
                Ok(())
            }))
        };
        Ok(SledStore {
            inner: Arc::new(Inner {
                db,
                segments,
                commit,
                stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
                gate,
                commit_phases,
                swept_segment_bytes: std::sync::atomic::AtomicU64::new(0),
                pending,
                compacting: Mutex::default(),
                damaged: Mutex::default(),
                revisit: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }
}

impl Inner {
    /// Applies one file's lines, merging them into their buckets. Not yet durable.
    pub(super) fn apply(&self, fb: &FileBatch<'_>, now: u64) -> Result<WriteStats, StoreError> {
        if fb.lines.is_empty() {
            return Ok(WriteStats::default());
        }
        let mut key = file_prefix(&fb.host, Some(&fb.file));
        key.extend_from_slice(fb.generation.as_bytes());
        let _locks = self.lock_generation(&key);
        // Stable while the gate is held: the sweep sets it under the exclusive gate.
        let compacting = self
            .compacting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();

        let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let existing = self.latest(&key)?;
        let fresh = existing.is_none();
        let mut meta = match existing {
            Some(v) => Meta::decode(&v)?,
            None => {
                let mut host_key = vec![HOST];
                host_key.extend_from_slice(fb.host.as_bytes());
                batch.push((host_key, Vec::new()));
                Meta {
                    id: self.db.generate_id().map_err(unavailable)?,
                    lines: 0,
                    max_line: 0,
                    first_write_ms: now,
                    last_write_ms: now,
                }
            }
        };

        let grouped = bucket::group(&fb.lines);
        let mut stats = WriteStats {
            lines: grouped.lines,
            bytes: grouped.bytes,
            new_lines: 0,
        };
        meta.max_line = if fresh {
            grouped.max_line
        } else {
            meta.max_line.max(grouped.max_line)
        };
        // Merged buckets go to the segment in appends of at most APPLY_CHUNK_BYTES (or
        // APPLY_CHUNK_BUCKETS), each with its own index batch: a request touching many
        // buckets costs bounded memory, and no append overshoots a segment by much.
        meta.last_write_ms = now;
        let mut data = Vec::new();
        let mut placed: Vec<Placed> = Vec::new();
        for (b, new) in grouped.buckets {
            let bucket_key = line_key(meta.id, b);
            let old = match self.latest(&bucket_key)? {
                Some(v) => Some(IndexValue::decode(&v).ok_or_else(|| {
                    StoreError::Corrupt(format!("index of bucket {b} of generation {}", meta.id))
                })?),
                None => None,
            };
            let new_offsets = keys::offsets(&new);
            // At most what the piece's encoding takes (a header is at most 11 bytes).
            let piece_bytes: u64 = new.iter().map(|e| e.content.len() as u64 + 11).sum();
            let (bytes, added, first_ms, earlier, present) = match old {
                // New lines only, not the last ones the bucket lacks, and room for a piece:
                // stored as one, nothing read back.
                Some(v)
                    if v.present
                        .is_some_and(|p| p & new_offsets == 0 && p | new_offsets != keys::FULL)
                        && v.pieces.len() < keys::MAX_PIECES
                        && v.len() + piece_bytes <= keys::MAX_PIECES_BYTES
                        && !v.pieces.iter().any(|l| compacting.contains(&l.segment)) =>
                {
                    let present = v.present.map(|p| p | new_offsets);
                    let piece = bucket::merge(&[], &new).0;
                    (piece, new.len() as u64, v.first_ms, v.pieces, present)
                }
                // Lines already there (last write wins), the bucket's last lines (a full
                // bucket is read as one piece), too many pieces, a bucket stored before
                // pieces existed, or pieces in a segment being compacted: read back, merged,
                // rewritten as one piece.
                Some(v) => {
                    let stored = self.read_bucket(&bucket_key, &v)?;
                    let old_entries = bucket::decode(&stored).ok_or_else(|| {
                        StoreError::Corrupt(format!("bucket {b} of generation {}", meta.id))
                    })?;
                    let present = keys::offsets(&old_entries) | new_offsets;
                    let (merged, added) = bucket::merge(&old_entries, &new);
                    (merged, added, v.first_ms, Vec::new(), Some(present))
                }
                None => {
                    let piece = bucket::merge(&[], &new).0;
                    (piece, new.len() as u64, now, Vec::new(), Some(new_offsets))
                }
            };
            stats.new_lines += added;
            meta.lines += added;
            placed.push(Placed {
                bucket: b,
                offset: data.len(),
                len: bytes.len(),
                first_ms,
                earlier,
                present,
            });
            data.extend_from_slice(&bytes);
            if data.len() >= APPLY_CHUNK_BYTES || placed.len() >= APPLY_CHUNK_BUCKETS {
                self.append_chunk(&key, &meta, &mut batch, &mut data, &mut placed)?;
            }
        }
        self.append_chunk(&key, &meta, &mut batch, &mut data, &mut placed)?;
        Ok(stats)
    }

    /// Locks a generation (by its metadata key) for a change: its stripe lock, which every
    /// write and drop of it holds, then the gate shared, from reading the index to adding the
    /// change's entries to `pending` — a commit (exclusive) takes either none or all of them,
    /// and never leaves a window in which they are neither pending nor in sled. Always in
    /// this order.
    pub(super) fn lock_generation(&self, key: &[u8]) -> GenerationLocks<'_> {
        let stripe = self.stripes[stripe_of(key)]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let gate = self
            .gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (stripe, gate)
    }

    /// Forgets the recently committed entries: for whatever changes sled outside a commit,
    /// before it lets go of the locks that keep writers from the keys it changed.
    pub(super) fn forget_recent(&self) {
        let mut o = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        o.recent = HashMap::new();
        o.older = HashMap::new();
    }

    /// The newest value of an index key: pending (written, not yet committed), recently
    /// committed, or in sled. For writers, under their stripe lock and the gate.
    pub(super) fn latest(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned();
        match pending {
            Some(v) => Ok(Some(v)),
            None => Ok(self.db.get(key).map_err(unavailable)?.map(|v| v.to_vec())),
        }
    }

    /// Appends merged buckets and adds their index entries, with the generation's metadata,
    /// to the pending entries the next commit applies in one sled batch (so the two never
    /// disagree after a crash). The caller holds the gate shared.
    fn append_chunk(
        &self,
        key: &[u8],
        meta: &Meta,
        batch: &mut Vec<(Vec<u8>, Vec<u8>)>,
        data: &mut Vec<u8>,
        placed: &mut Vec<Placed>,
    ) -> Result<(), StoreError> {
        if !placed.is_empty() {
            let (segment, start) = self
                .segments
                .append_buffered(data)
                .map_err(io_unavailable)?;
            for p in placed.drain(..) {
                let len = u32::try_from(p.len).map_err(|_| {
                    StoreError::Corrupt(format!(
                        "bucket {} would be {} bytes, over 4 GiB",
                        p.bucket, p.len
                    ))
                })?;
                let mut pieces = p.earlier;
                pieces.push(Loc {
                    segment,
                    offset: start + p.offset as u64,
                    len,
                });
                let value = IndexValue {
                    pieces,
                    first_ms: p.first_ms,
                    last_ms: meta.last_write_ms,
                    present: p.present,
                };
                batch.push((line_key(meta.id, p.bucket).to_vec(), value.encode()));
            }
            data.clear();
        }
        batch.push((key.to_vec(), meta.encode().to_vec()));
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pending
            .extend(batch.drain(..));
        Ok(())
    }

    fn generations(&self, host: &str, file: &str) -> Result<Vec<GenerationInfo>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(file_prefix(host, Some(file))) {
            let (k, v) = item.map_err(unavailable)?;
            let Some((_, _, generation)) = parse_file_key(&k) else {
                return Err(StoreError::Corrupt("unreadable file key".into()));
            };
            out.push(info(generation, Meta::decode(&v)?));
        }
        out.sort_by_key(|g| g.id);
        Ok(out)
    }

    fn files(
        &self,
        host: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<FileInfo>, StoreError> {
        let prefix = host.map_or_else(|| vec![FILE], |h| file_prefix(h, None));
        let start = after.map_or_else(|| prefix.clone(), |(h, f)| file_prefix(h, Some(f)));
        let start = start.max(prefix.clone());
        let mut out: Vec<FileInfo> = Vec::new();
        for item in self.db.range(start..) {
            let (k, v) = item.map_err(unavailable)?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Some((host, file, generation)) = parse_file_key(&k) else {
                return Err(StoreError::Corrupt("unreadable file key".into()));
            };
            if after == Some((host.as_str(), file.as_str())) {
                continue;
            }
            let g = info(generation, Meta::decode(&v)?);
            let full = out.len() >= limit;
            match out.last_mut() {
                Some(f) if f.host == host && f.file == file => f.generations.push(g),
                _ if full => break,
                _ => out.push(FileInfo {
                    host,
                    file,
                    generations: vec![g],
                }),
            }
        }
        for f in &mut out {
            f.generations.sort_by_key(|g| g.id);
        }
        Ok(out)
    }

    fn read_chunk(&self, id: u64, read: &Read) -> Result<Chunk, StoreError> {
        let (from, to) = (read.from, read.to);
        let mut chunk = Chunk {
            end: from,
            ..Chunk::default()
        };
        if from > to {
            return Ok(chunk);
        }
        let (first, last) = (from / LINES_PER_BUCKET, to / LINES_PER_BUCKET);
        for item in self.db.range(line_key(id, first)..=line_key(id, last)) {
            let (k, v) = item.map_err(unavailable)?;
            let mut b = [0u8; 8];
            b.copy_from_slice(&k[9..17]);
            let base = u64::from_be_bytes(b) * LINES_PER_BUCKET;
            let value = IndexValue::decode(&v).ok_or_else(|| {
                StoreError::Corrupt(format!("index at line {base} of generation {id}"))
            })?;
            if read.outside(value.first_ms, value.last_ms) {
                // Received wholly outside the window: not even read.
                chunk.skipped += 1;
                continue;
            }
            let corrupt = |e: std::io::Error| {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    StoreError::Corrupt(format!("bucket at line {base} of generation {id}: {e}"))
                } else {
                    io_unavailable(e)
                }
            };
            let decode = |whole: &[u8], chunk: &mut Chunk| {
                // The usual case, a bucket that fits the cursor's buffer (or in pieces):
                // decoded from the slice (the per-byte cursor path cost ~40 % of download
                // speed).
                let entries = bucket::decode(whole).ok_or_else(|| {
                    StoreError::Corrupt(format!("bucket at line {base} of generation {id}"))
                })?;
                Ok::<_, StoreError>(chunk.push_bucket(base, &entries, read))
            };
            let mut cursor = match self.open_bucket(&k, &value)? {
                Opened::Cursor(c) => c,
                Opened::Merged(whole) => {
                    if decode(&whole, &mut chunk)? {
                        return Ok(chunk);
                    }
                    continue;
                }
            };
            if let Some(whole) = cursor.whole().map_err(corrupt)? {
                if decode(whole, &mut chunk)? {
                    return Ok(chunk);
                }
                continue;
            } else {
                while let Some(h) = bucket::next_header(&mut cursor).map_err(corrupt)? {
                    let n = base + u64::from(h.offset);
                    if n < from || n > to {
                        cursor.skip(h.len).map_err(corrupt)?;
                        continue;
                    }
                    if !chunk.admit(n, h.partial, read.contiguous, read.numbered) {
                        return Ok(chunk);
                    }
                    cursor.read_into(&mut chunk.data, h.len).map_err(corrupt)?;
                    if chunk.close_line(n, h.partial, read.max_bytes, to) {
                        return Ok(chunk);
                    }
                }
            }
            if read.full_after(&mut chunk, base) {
                return Ok(chunk);
            }
        }
        Ok(chunk)
    }
}

/// Buckets adjacent in a segment are read together up to this many bytes.
const SCAN_RUN_BYTES: usize = 4 << 20;
/// A bucket larger than this is scanned through a cursor, never read whole.
const SCAN_BIG_BUCKET: usize = 1 << 20;

impl Inner {
    /// A search's scan of one generation: the index walked in line order, adjacent buckets
    /// read in one `pread` of up to [`SCAN_RUN_BYTES`], each block handed to `visit` as it
    /// is on disk with its lines' positions. Returns the buckets skipped by `window`.
    fn scan(
        &self,
        id: u64,
        window: Option<(u64, u64)>,
        visit: &mut crate::Visitor<'_>,
    ) -> Result<u64, StoreError> {
        let mut run: Vec<(u64, Loc)> = Vec::new();
        let mut run_bytes = 0usize;
        let mut block = Vec::new();
        let mut lines = Vec::new();
        // Buckets in pieces, merged, back to back (never at once with `run`: lines go in order).
        let mut merged = Vec::new();
        let mut merged_lines = Vec::new();
        let mut skipped = 0;
        for item in self.db.range(line_key(id, 0)..=line_key(id, u64::MAX)) {
            let (k, v) = item.map_err(unavailable)?;
            let bucket = u64::from_be_bytes(k[9..17].try_into().unwrap_or_default());
            let value = IndexValue::decode(&v).ok_or_else(|| {
                StoreError::Corrupt(format!("index of bucket {bucket} of generation {id}"))
            })?;
            if let Some((since, until)) = window {
                if value.first_ms > until || value.last_ms < since {
                    skipped += 1;
                    continue;
                }
            }
            let loc = match value.pieces.as_slice() {
                [one] => *one,
                _ => {
                    // In pieces: merged in memory, gathered with the next buckets in pieces.
                    if !run.is_empty() {
                        if !self.scan_run(id, &run, &mut block, &mut lines, visit)? {
                            return Ok(skipped);
                        }
                        run.clear();
                        run_bytes = 0;
                    }
                    let bytes = self.read_bucket(&k, &value)?;
                    let at = merged.len();
                    merged.extend_from_slice(&bytes);
                    let base = bucket * LINES_PER_BUCKET;
                    bucket::index_into(&merged, at, bytes.len(), base, &mut merged_lines)
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!("bucket {bucket} of generation {id}"))
                        })?;
                    if merged.len() >= SCAN_RUN_BYTES {
                        let go_on = visit(&mut merged, &mut merged_lines);
                        merged.clear();
                        merged_lines.clear();
                        if !go_on {
                            return Ok(skipped);
                        }
                    }
                    continue;
                }
            };
            if !merged.is_empty() {
                let go_on = visit(&mut merged, &mut merged_lines);
                merged.clear();
                merged_lines.clear();
                if !go_on {
                    return Ok(skipped);
                }
            }
            let adjacent = run.last().is_some_and(|(_, l)| {
                l.segment == loc.segment && l.offset + u64::from(l.len) == loc.offset
            });
            let big = loc.len as usize > SCAN_BIG_BUCKET;
            if !run.is_empty()
                && (big || !adjacent || run_bytes + loc.len as usize > SCAN_RUN_BYTES)
            {
                if !self.scan_run(id, &run, &mut block, &mut lines, visit)? {
                    return Ok(skipped);
                }
                run.clear();
                run_bytes = 0;
            }
            if big {
                // Never read whole (a bucket of long lines can be 128 times their size):
                // through the download's cursor, a chunk at a time.
                if !self.scan_big_bucket(id, bucket, visit)? {
                    return Ok(skipped);
                }
                continue;
            }
            run_bytes += loc.len as usize;
            run.push((bucket, loc));
        }
        if !run.is_empty() {
            self.scan_run(id, &run, &mut block, &mut lines, visit)?;
        }
        if !merged.is_empty() {
            visit(&mut merged, &mut merged_lines);
        }
        Ok(skipped)
    }

    /// Visits a bucket too big to read whole, [`SCAN_BIG_BUCKET`] at a time (plus at most
    /// one line); false when the visitor stopped.
    fn scan_big_bucket(
        &self,
        id: u64,
        bucket: u64,
        visit: &mut crate::Visitor<'_>,
    ) -> Result<bool, StoreError> {
        let (first, last) = (
            bucket * LINES_PER_BUCKET,
            (bucket + 1) * LINES_PER_BUCKET - 1,
        );
        let mut from = first;
        loop {
            let c = self.read_chunk(id, &Read::search(from, last, SCAN_BIG_BUCKET, None))?;
            let mut lines: Vec<crate::RawLine> = c
                .lines
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let next = c.lines.get(i + 1).map_or(c.data.len(), |n| n.start);
                    crate::RawLine {
                        number: l.number,
                        start: l.start,
                        // The rendered chunk ends each complete line with `\n`.
                        end: if l.partial { next } else { next - 1 },
                        partial: l.partial,
                    }
                })
                .collect();
            let mut data = c.data;
            if !lines.is_empty() && !visit(&mut data, &mut lines) {
                return Ok(false);
            }
            match c.next {
                Some(n) => from = n,
                None => return Ok(true),
            }
        }
    }

    /// Reads one run of adjacent buckets and visits it; false when the visitor stopped.
    fn scan_run(
        &self,
        id: u64,
        run: &[(u64, Loc)],
        block: &mut Vec<u8>,
        lines: &mut Vec<crate::RawLine>,
        visit: &mut crate::Visitor<'_>,
    ) -> Result<bool, StoreError> {
        let (first, last) = (run[0].1, run[run.len() - 1].1);
        let len = (last.offset + u64::from(last.len) - first.offset) as usize;
        lines.clear();
        let index = |block: &[u8], lines: &mut Vec<crate::RawLine>, bucket: u64, at, len| {
            bucket::index_into(block, at, len, bucket * LINES_PER_BUCKET, lines)
                .ok_or_else(|| StoreError::Corrupt(format!("bucket {bucket} of generation {id}")))
        };
        match self
            .segments
            .read_range_into(first.segment, first.offset, len, block)
        {
            Ok(()) => {
                for (bucket, loc) in run {
                    let at = (loc.offset - first.offset) as usize;
                    index(block, lines, *bucket, at, loc.len as usize)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Compaction moved these buckets and deleted the segment meanwhile: read each
                // where the index points now.
                block.clear();
                for (bucket, _) in run {
                    let Some(v) = self.db.get(line_key(id, *bucket)).map_err(unavailable)? else {
                        continue;
                    };
                    let value = IndexValue::decode(&v).ok_or_else(|| {
                        StoreError::Corrupt(format!("index of bucket {bucket} of generation {id}"))
                    })?;
                    let bytes = self.read_bucket(&line_key(id, *bucket), &value)?;
                    let at = block.len();
                    block.extend_from_slice(&bytes);
                    index(block, lines, *bucket, at, bytes.len())?;
                }
            }
            Err(e) => return Err(io_unavailable(e)),
        }
        Ok(visit(block, lines))
    }
}

fn info(name: String, m: Meta) -> GenerationInfo {
    GenerationInfo {
        name,
        id: m.id,
        lines: m.lines,
        max_line: m.max_line,
        first_write: to_time(m.first_write_ms),
        last_write: to_time(m.last_write_ms),
    }
}

/// A merged bucket waiting in an append: where it sits in the data, and when its first
/// line was received.
struct Placed {
    bucket: u64,
    offset: usize,
    len: usize,
    first_ms: u64,
    /// The bucket's pieces before this one (empty when this one is the whole bucket).
    earlier: Vec<Loc>,
    present: Option<u128>,
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
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
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
                    let s = self.inner.apply(fb, now)?;
                    total.lines += s.lines;
                    total.bytes += s.bytes;
                    total.new_lines += s.new_lines;
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
                    .map_err(|_| StoreError::Corrupt("host key is not UTF-8".into()))?;
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
        visit: &mut crate::Visitor<'_>,
    ) -> Option<Result<u64, StoreError>> {
        Some(self.inner.scan(id, window, visit))
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
            let store = SledStore::open(dir.path(), &SledOptions { cache_capacity }).expect("open");
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
