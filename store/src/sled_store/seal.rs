//! Sealing: buckets that stopped changing are gathered into compressed blocks (`blocks.rs`).
//!
//! Writers store raw buckets, as before; a sealer thread of its own (never an async worker)
//! wakes every few seconds, walks the generations written since it last looked, and gathers
//! runs of consecutive buckets into blocks of about [`BLOCK_RAW_BYTES`]:
//! - a run is sealed once it holds a block's worth, or once the file has been quiet for
//!   `seal_after` (its last buckets too), or once its oldest line is [`MAX_AGE_FACTOR`] ×
//!   `seal_after` old (a slow file's lines do not stay raw for ever);
//! - a bucket still filling is left raw until the file is quiet, so a live file's last bucket
//!   is not sealed and unsealed at every write.
//!
//! Each bucket keeps its own index entry, now naming the block and its slot in it. So a
//! resend, or a partial line completed, into sealed lines is a plain bucket write: the writer
//! reads the bucket out of its block, merges, and stores it raw again (last write wins), and
//! the block's copy becomes garbage that compaction accounts for.
//!
//! Crash safety, the compaction's recipe: the block is appended and fsynced before any index
//! entry names it, and each entry moves with a compare-and-swap against the value the block
//! was built from, so a writer that changed the bucket meanwhile wins. A kill -9 at any point
//! leaves every entry naming either its raw bucket or a durable block; a block no entry names
//! is garbage the sweep reclaims with its segment. Sealing and the sweep never run at once
//! (`maintenance`): a compaction deletes a segment only after a commit has made durable
//! every entry that stopped naming it, and an entry swapped by a concurrent seal between that
//! commit and the deletion would not be.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::blocks::{self, BLOCK_RAW_BYTES};
use super::keys::{line_key, IndexValue, Sealed, FILE};
use super::segments::Loc;
use super::{io_unavailable, unavailable, Inner, Meta};
use crate::StoreError;

/// A bucket bigger than this stays raw: readers stream it through a cursor instead of holding
/// it, and a block holding it would have to be held whole.
const SEAL_MAX_BUCKET: u64 = 1 << 20;
/// Blocks appended with one fsync: each block fsynced alone cost ~6 % of the aggregator's
/// CPU in the benchmark's system scenario.
const BLOCKS_PER_SYNC: usize = 16;
/// A run not yet a block's worth is sealed anyway once its oldest line is this many times
/// `seal_after` old.
const MAX_AGE_FACTOR: u64 = 10;

/// What sealing did and what waits, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct SealMetrics {
    pub(super) blocks: Counter,
    pub(super) buckets: Counter,
    pub(super) raw_bytes: Counter,
    pub(super) stored_bytes: Counter,
    /// Raw bytes not sealed yet: what the last round left, plus what writers stored since
    /// it began (the sealing lag, in bytes).
    pub(super) waiting_bytes: Gauge,
    /// Raw bytes writers have stored, ever (for `waiting_bytes`).
    pub(super) written: std::sync::atomic::AtomicU64,
    pub(super) failures: Counter,
    /// Blocks that failed to decompress when read.
    pub(super) corrupt: Counter,
}

/// Generations written since the sealer last walked them, each with the first bucket that
/// may be unsealed. `all` asks for every generation (at start: a store written by an older
/// release, or before a crash, is sealed in the background).
#[derive(Debug)]
pub(crate) struct Unsealed {
    pub(super) from: HashMap<u64, u64>,
    pub(super) all: bool,
}

impl Default for Unsealed {
    fn default() -> Self {
        Unsealed {
            from: HashMap::new(),
            all: true,
        }
    }
}

/// One generation's walk: the run of raw buckets gathered for the next block, and what the
/// walk leaves for later.
struct Walk {
    /// Runs ready to be sealed, written out together (one fsync for all).
    ready: Vec<Vec<Gathered>>,
    run: Vec<Gathered>,
    /// Raw bytes in `run`.
    bytes: u64,
    /// The first bucket to look at again next round.
    resume: Option<u64>,
    /// Raw bytes left unsealed.
    waiting: u64,
    now_ms: u64,
    seal_after_ms: u64,
}

impl Walk {
    /// Whether the bucket's last write is `seal_after` old.
    fn quiet(&self, v: &IndexValue) -> bool {
        self.now_ms.saturating_sub(v.last_ms) >= self.seal_after_ms
    }
}

/// A block built for a seal: where it starts in the append, its length, and its buckets
/// with their raw sizes.
type Built<'a> = (usize, usize, Vec<(&'a Gathered, usize)>);

/// A raw bucket gathered for a block: its key, the index value as stored (for the swap) and
/// decoded.
struct Gathered {
    key: sled::IVec,
    stored: sled::IVec,
    value: IndexValue,
}

impl SealMetrics {
    /// Writers stored `bytes` raw: they wait to be sealed.
    pub(super) fn note_written(&self, bytes: usize) {
        self.written.fetch_add(bytes as u64, Ordering::Relaxed);
        self.waiting_bytes.inc_by(bytes as i64);
    }
}

impl Inner {
    /// Notes that generation `id` was written from `bucket` on, for the sealer.
    pub(super) fn mark_unsealed(&self, id: u64, bucket: u64) {
        let mut u = self
            .unsealed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let from = u.from.entry(id).or_insert(bucket);
        *from = (*from).min(bucket);
    }

    /// One round of sealing: every generation written since the last round, from the first
    /// bucket it may have unsealed. Blocking; never on an async worker.
    pub(super) fn seal_round(&self, now_ms: u64, seal_after_ms: u64) -> Result<(), StoreError> {
        let (todo, all) = {
            let mut u = self
                .unsealed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (
                std::mem::take(&mut u.from),
                std::mem::replace(&mut u.all, false),
            )
        };
        let mut todo: Vec<(u64, u64)> = todo.into_iter().collect();
        if all {
            todo = match self.every_generation() {
                Ok(every) => every,
                Err(e) => {
                    // Asked again next round, with what writers marked.
                    let mut u = self
                        .unsealed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    u.all = true;
                    for (id, from) in todo {
                        let f = u.from.entry(id).or_insert(from);
                        *f = (*f).min(from);
                    }
                    return Err(e);
                }
            };
            tracing::info!(
                generations = todo.len(),
                "sealing what the store holds unsealed, in the background"
            );
        }
        todo.sort_unstable();
        let mut waiting = 0u64;
        let written_before = self.seal_metrics.written.load(Ordering::Relaxed);
        let total = todo.len();
        let started = std::time::Instant::now();
        let mut last_progress = started;
        for (n, &(id, from)) in todo.iter().enumerate() {
            match self.seal_generation(id, from, now_ms, seal_after_ms, &mut waiting) {
                Ok(Some(resume)) => self.mark_unsealed(id, resume),
                Ok(None) => {}
                Err(e) => {
                    self.seal_metrics.failures.inc();
                    // The rest of the round goes on. An unavailable disk or index is tried
                    // again next round; damaged data is not (its readers report it), or it
                    // would be logged every round for good.
                    if e.is_corrupt() {
                        tracing::warn!(generation_id = id, error = %e.report(), "a generation holds damaged data; left unsealed");
                    } else {
                        self.mark_unsealed(id, from);
                        tracing::warn!(generation_id = id, error = %e.report(), "sealing a generation failed; retrying");
                    }
                }
            }
            if all && last_progress.elapsed().as_secs() >= 10 {
                last_progress = std::time::Instant::now();
                tracing::info!(progress = format!("{}/{total}", n + 1), "sealing the store");
            }
        }
        if all {
            tracing::info!(generations = total, took = ?started.elapsed(), "store sealed");
        }
        let written_since = self
            .seal_metrics
            .written
            .load(Ordering::Relaxed)
            .saturating_sub(written_before);
        self.seal_metrics
            .waiting_bytes
            .set(i64::try_from(waiting + written_since).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Every generation, from its first bucket.
    fn every_generation(&self) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix([FILE]) {
            let (_, v) = item.map_err(unavailable)?;
            out.push((Meta::decode(&v)?.id, 0));
        }
        Ok(out)
    }

    /// Seals what is ready in generation `id` from bucket `from`; returns the bucket to look
    /// at again next round, if something there is not ready yet. Adds what it left raw to
    /// `waiting`.
    fn seal_generation(
        &self,
        id: u64,
        from: u64,
        now_ms: u64,
        seal_after_ms: u64,
        waiting: &mut u64,
    ) -> Result<Option<u64>, StoreError> {
        let mut walk = Walk {
            ready: Vec::new(),
            run: Vec::new(),
            bytes: 0,
            resume: None,
            waiting: 0,
            now_ms,
            seal_after_ms,
        };
        for item in self.db.range(line_key(id, from)..=line_key(id, u64::MAX)) {
            let (key, stored) = item.map_err(unavailable)?;
            let bucket = u64::from_be_bytes(key[9..17].try_into().unwrap_or_default());
            let value = IndexValue::decode(&stored).ok_or_else(|| {
                StoreError::corrupt(format!("index of bucket {bucket} of generation {id}"))
            })?;
            let never = value.sealed.is_some() || value.len() > SEAL_MAX_BUCKET;
            let filling = !value.is_full() && !walk.quiet(&value);
            if never || filling {
                // Already sealed or never to be (a bucket too big), or still filling: the
                // run before it ends here; a filling bucket is looked at again.
                self.end_run(&mut walk, false)?;
                if !never {
                    walk.resume.get_or_insert(bucket);
                    walk.waiting += value.len();
                }
                continue;
            }
            walk.bytes += value.len();
            walk.run.push(Gathered { key, stored, value });
            if walk.bytes >= BLOCK_RAW_BYTES as u64 {
                walk.ready.push(std::mem::take(&mut walk.run));
                walk.bytes = 0;
                if walk.ready.len() >= BLOCKS_PER_SYNC {
                    self.seal(&std::mem::take(&mut walk.ready))?;
                }
            }
        }
        self.end_run(&mut walk, true)?;
        self.seal(&walk.ready)?;
        *waiting += walk.waiting;
        Ok(walk.resume)
    }

    /// A run short of a block's worth: sealed if the file is quiet (`at_end`: nothing after
    /// it) or its oldest line is old enough; otherwise left for a later round.
    fn end_run(&self, walk: &mut Walk, at_end: bool) -> Result<(), StoreError> {
        let Some(first) = walk.run.first() else {
            return Ok(());
        };
        let quiet = walk.run.iter().all(|g| walk.quiet(&g.value));
        let oldest = walk
            .run
            .iter()
            .map(|g| g.value.first_ms)
            .min()
            .unwrap_or(walk.now_ms);
        let old =
            walk.now_ms.saturating_sub(oldest) >= walk.seal_after_ms.saturating_mul(MAX_AGE_FACTOR);
        if (at_end && quiet) || old {
            walk.ready.push(std::mem::take(&mut walk.run));
        } else {
            let bucket = u64::from_be_bytes(first.key[9..17].try_into().unwrap_or_default());
            let r = walk.resume.get_or_insert(bucket);
            *r = (*r).min(bucket);
            walk.waiting += walk.bytes;
        }
        walk.run.clear();
        walk.bytes = 0;
        Ok(())
    }

    /// Compresses each run into a block, appends them together and makes them durable with
    /// one fsync, then points each bucket's entry at its block unless a writer changed the
    /// bucket meanwhile.
    fn seal(&self, runs: &[Vec<Gathered>]) -> Result<(), StoreError> {
        // Per block: where it starts in `data`, its length, and its buckets with raw sizes.
        let mut data = Vec::new();
        let mut built: Vec<Built<'_>> = Vec::new();
        for run in runs {
            let mut raws = Vec::with_capacity(run.len());
            let mut kept = Vec::with_capacity(run.len());
            for g in run {
                match self.read_bucket(&g.key, &g.value) {
                    Ok(bytes) => {
                        kept.push((g, bytes.len()));
                        raws.push(bytes);
                    }
                    // A damaged bucket stays as it is (and is reported by whoever reads it).
                    Err(e) if e.is_corrupt() => {
                        tracing::warn!(error = %e.detail(), "a damaged bucket was left unsealed");
                    }
                    Err(e) => return Err(e),
                }
            }
            if kept.is_empty() {
                continue;
            }
            let block = blocks::encode(&raws)
                .map_err(|e| StoreError::corrupt_by("a bucket to seal did not decode", e))?;
            built.push((data.len(), block.len(), kept));
            data.extend_from_slice(&block);
        }
        if built.is_empty() {
            return Ok(());
        }
        let (segment, offset) = self.segments.append_sealed(&data).map_err(io_unavailable)?;
        // Shared like a writer, from the first swap to forgetting the recent entries.
        let _shared = self
            .gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut buckets, mut raw_total) = (0u64, 0u64);
        for (at, len, kept) in &built {
            let loc = Loc {
                segment,
                offset: offset + *at as u64,
                len: u32::try_from(*len).map_err(|_| StoreError::corrupt("a block over 4 GiB"))?,
            };
            for (slot, (g, raw_len)) in kept.iter().enumerate() {
                let new = IndexValue::in_block(
                    loc,
                    g.value.first_ms,
                    g.value.last_ms,
                    Sealed {
                        slot: slot as u32,
                        raw_len: *raw_len as u32,
                    },
                );
                let swapped = self
                    .db
                    .compare_and_swap(&g.key, Some(&g.stored[..]), Some(new.encode()))
                    .map_err(unavailable)?;
                if swapped.is_ok() {
                    buckets += 1;
                    raw_total += *raw_len as u64;
                }
            }
        }
        // Writers read the block from here on (one that read the raw value meanwhile still
        // finds it: only compaction deletes, and it never runs during a seal). Only the keys
        // swapped are forgotten: the sealer runs every few seconds over every file written,
        // and clearing the whole overlay each time would cost writers the point reads it
        // saves them.
        self.forget(
            built
                .iter()
                .flat_map(|(_, _, kept)| kept.iter().map(|(g, _)| &g.key[..])),
        );
        let m = &self.seal_metrics;
        m.blocks.inc_by(built.len() as u64);
        m.buckets.inc_by(buckets);
        m.raw_bytes.inc_by(raw_total);
        m.stored_bytes.inc_by(data.len() as u64);
        // The raw copies are garbage now: the next sweep looks, grown or not.
        self.revisit.store(true, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::keys::line_key;
    use super::super::sweep::tests::batch;
    use super::super::{SledOptions, SledStore};
    use super::*;
    use crate::{RetentionPolicy, Store};

    /// Opens without a sealer thread (the tests seal by hand); a handle just dropped lets go
    /// of the index a moment later.
    fn open(dir: &std::path::Path) -> SledStore {
        let opts = SledOptions {
            seal_after: None,
            ..SledOptions::default()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match SledStore::open(dir, &opts) {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() > deadline => panic!("open: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Access-log lines with the repetition real ones have (paths, agents, statuses).
    fn access_lines(from: u64, n: u64, tag: &str) -> Vec<(u64, String)> {
        const PATHS: [&str; 4] = ["/api/v1/items", "/login", "/static/app.js", "/api/v1/cart"];
        (from..from + n)
            .map(|i| {
                (
                    i,
                    format!(
                        "10.0.{}.{} - - [07/Dec/2026:10:{:02}:{:02} +0000] \"GET {}?id={} HTTP/1.1\" {} {} \"-\" \"Mozilla/5.0 ({tag})\"",
                        i % 7,
                        i % 251,
                        (i / 60) % 60,
                        i % 60,
                        PATHS[(i % 4) as usize],
                        i * 7919 % 100_000,
                        [200, 200, 304, 404][(i % 4) as usize],
                        1000 + i % 5000
                    ),
                )
            })
            .collect()
    }

    async fn write(store: &SledStore, file: &str, lines: &[(u64, String)]) {
        for chunk in lines.chunks(1000) {
            store
                .write(&[batch(file, "g", chunk)])
                .await
                .expect("write");
        }
    }

    async fn read_all(store: &SledStore, file: &str) -> Result<String, StoreError> {
        let id = store.generations("h", file).await?[0].id;
        let mut out = Vec::new();
        let mut from = 0;
        loop {
            let c = store
                .read_chunk(id, from, u64::MAX >> 16, 1 << 20, false, false)
                .await?;
            out.extend_from_slice(&c.data);
            match c.next {
                Some(n) => from = n,
                None => return Ok(String::from_utf8(out).expect("utf8")),
            }
        }
    }

    fn rendered(lines: &[(u64, String)]) -> String {
        lines.iter().map(|(_, s)| format!("{s}\n")).collect()
    }

    /// The index values of `file`'s buckets, in order.
    async fn values(store: &SledStore, file: &str) -> Vec<IndexValue> {
        let id = store.generations("h", file).await.expect("generations")[0].id;
        store
            .inner
            .db
            .range(line_key(id, 0)..=line_key(id, u64::MAX))
            .map(|item| IndexValue::decode(&item.expect("index").1).expect("decodes"))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sealed_lines_read_back_identical_in_a_fraction_of_the_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let lines = access_lines(0, 20_000, "a");
        write(&store, "/f", &lines).await;
        store.flush().await.expect("flush");
        let raw = store.inner.segments.size();
        let times = |store: SledStore| async move {
            let id = store.generations("h", "/f").await.expect("gens")[0].id;
            let c = store
                .read_chunk(id, 0, u64::MAX >> 16, 64 << 20, false, true)
                .await
                .expect("read");
            c.lines.iter().map(|l| (l.number, l.ts)).collect::<Vec<_>>()
        };
        let before = times(store.clone()).await;
        assert!(before.iter().all(|(_, ts)| ts.is_some()));
        store.seal_now(Duration::ZERO).await.expect("seal");
        assert_eq!(
            times(store.clone()).await,
            before,
            "every line keeps its time"
        );
        let v = values(&store, "/f").await;
        assert!(v.iter().all(|v| v.sealed.is_some()), "every bucket sealed");
        let blocks: std::collections::HashSet<_> = v.iter().map(|v| v.pieces[0]).collect();
        assert!(
            blocks.len() < v.len() / 4,
            "{} blocks for {} buckets",
            blocks.len(),
            v.len()
        );
        assert_eq!(
            read_all(&store, "/f").await.expect("read"),
            rendered(&lines)
        );
        // The raw buckets are garbage now; a sweep gives their space back.
        store
            .sweep(RetentionPolicy::default(), std::time::SystemTime::now())
            .await
            .expect("sweep");
        let sealed = store.inner.segments.size();
        assert!(sealed * 5 < raw, "{sealed} bytes sealed of {raw} raw");
        assert_eq!(
            read_all(&store, "/f").await.expect("read"),
            rendered(&lines)
        );
        // And after a restart.
        drop(store);
        let store = open(dir.path());
        assert_eq!(
            read_all(&store, "/f").await.expect("read"),
            rendered(&lines)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn block_filters_skip_blocks_and_never_a_match() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let mut lines = access_lines(0, 40_000, "a");
        // One line with a token no other line has, as a request or trace id is.
        lines[31_337].1.push_str(" trace=Zq9xK2vW");
        write(&store, "/f", &lines).await;
        store.seal_now(Duration::ZERO).await.expect("seal");
        let id = store.generations("h", "/f").await.expect("gens")[0].id;
        let buckets = values(&store, "/f").await.len() as u64;
        for literal in ["trace=Zq9xK2vW", "/login?id=", "no such text", "id=424242"] {
            let mut found = Vec::new();
            let skipped = store
                .inner
                .scan(id, None, Some(literal.as_bytes()), &mut |data, raw| {
                    found.extend(raw.iter().filter_map(|l| {
                        let c = &data[l.start..l.end];
                        c.windows(literal.len())
                            .any(|w| w == literal.as_bytes())
                            .then_some(l.number)
                    }));
                    true
                })
                .expect("scan");
            let want: Vec<u64> = lines
                .iter()
                .filter(|(_, l)| l.contains(literal))
                .map(|(n, _)| *n)
                .collect();
            assert_eq!(found, want, "{literal:?}");
            if !literal.contains("id=") && want.len() < 10 {
                assert!(
                    skipped * 2 > buckets,
                    "{literal:?}: only {skipped} of {buckets} buckets skipped"
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resend_into_a_sealed_block_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let mut lines = access_lines(0, 3_000, "a");
        write(&store, "/f", &lines).await;
        store.seal_now(Duration::ZERO).await.expect("seal");
        assert!(values(&store, "/f").await[1].sealed.is_some());
        // Lines 200..210 again, changed (as a completed partial line would be).
        let again = access_lines(200, 10, "b");
        let stats = store
            .write(&[batch("/f", "g", &again)])
            .await
            .expect("write");
        assert_eq!(stats.new_lines, 0, "a resend adds no lines");
        lines.splice(200..210, again);
        assert_eq!(
            read_all(&store, "/f").await.expect("read"),
            rendered(&lines)
        );
        let v = values(&store, "/f").await;
        assert!(v[1].sealed.is_none(), "the rewritten bucket is raw again");
        assert!(
            v[0].sealed.is_some() && v[2].sealed.is_some(),
            "its neighbours stay sealed"
        );
        store.seal_now(Duration::ZERO).await.expect("seal");
        assert!(
            values(&store, "/f").await[1].sealed.is_some(),
            "sealed again"
        );
        assert_eq!(
            read_all(&store, "/f").await.expect("read"),
            rendered(&lines)
        );
        assert_eq!(
            store.generations("h", "/f").await.expect("gens")[0].lines,
            3_000
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_file_keeps_its_filling_bucket_raw_until_quiet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        // A block's worth of full buckets and one bucket still filling.
        let lines = access_lines(0, 3_000, "a");
        write(&store, "/f", &lines).await;
        store
            .seal_now(Duration::from_secs(3600))
            .await
            .expect("seal");
        let v = values(&store, "/f").await;
        let (last, full) = v.split_last().expect("buckets");
        assert!(last.sealed.is_none(), "the filling bucket stays raw");
        assert!(
            full.iter().any(|v| v.sealed.is_some()),
            "a block's worth is sealed"
        );
        // A small file not yet quiet stays raw; quiet, it is sealed.
        write(&store, "/small", &access_lines(0, 300, "s")).await;
        store
            .seal_now(Duration::from_secs(3600))
            .await
            .expect("seal");
        assert!(values(&store, "/small")
            .await
            .iter()
            .all(|v| v.sealed.is_none()));
        store.seal_now(Duration::ZERO).await.expect("seal");
        assert!(values(&store, "/small")
            .await
            .iter()
            .all(|v| v.sealed.is_some()));
        assert_eq!(
            read_all(&store, "/small").await.expect("read"),
            rendered(&access_lines(0, 300, "s"))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_block_is_a_corrupt_error_and_the_rest_still_reads() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let (a, b) = (access_lines(0, 2_000, "a"), access_lines(0, 2_000, "b"));
        write(&store, "/a", &a).await;
        write(&store, "/b", &b).await;
        store.seal_now(Duration::ZERO).await.expect("seal");
        // Not read yet, so no decoded copy is cached.
        let block = values(&store, "/a").await[0].pieces[0];
        let seg = dir
            .path()
            .join("segments")
            .join(format!("{:08}.seg", block.segment));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("segment");
        f.write_all_at(b"garbage!", block.offset + u64::from(block.len) / 2)
            .expect("damage");
        let err = read_all(&store, "/a").await.expect_err("a damaged block");
        assert!(err.is_corrupt(), "{err:?}");
        assert_eq!(read_all(&store, "/b").await.expect("read"), rendered(&b));
        // Compaction copies it as it is; a seal leaves it; nothing panics.
        store.seal_now(Duration::ZERO).await.expect("seal");
        store
            .sweep(RetentionPolicy::default(), std::time::SystemTime::now())
            .await
            .expect("sweep");
        assert_eq!(read_all(&store, "/b").await.expect("read"), rendered(&b));
    }
}
