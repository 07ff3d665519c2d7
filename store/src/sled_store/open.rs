//! Opening the store: sled, the segments, and the group commit that makes writes durable
//! (segments fsynced, pending entries applied, sled flushed and its log fsynced).

use super::*;

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
                    // One `apply_batch` per commit. A patched sled that applied the sorted
                    // entries without building a `Batch` measured the same fleet CPU per
                    // line (3.02 against 3.01 µs, 3 parallel rounds), so it was dropped.
                    let mut batch = sled::Batch::default();
                    for (k, v) in &entries {
                        batch.insert(&k[..], &v[..]);
                    }
                    db.apply_batch(batch).map_err(|e| e.to_string())?;
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
        let store = SledStore {
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
                blocks: Default::default(),
                unsealed: Default::default(),
                seal_metrics: Default::default(),
                maintenance: Default::default(),
            }),
        };
        if let Some(seal_after) = opts.seal_after {
            store.start_sealer(seal_after)?;
        }
        Ok(store)
    }
}

impl SledStore {
    /// Runs one sealing round now, with lines quiet for `seal_after` counting as quiet (the
    /// sealer thread does this periodically; tests and tools call it directly).
    pub async fn seal_now(&self, seal_after: std::time::Duration) -> Result<(), StoreError> {
        let _maintenance = self.inner.maintenance.lock().await;
        let inner = self.inner.clone();
        let ms = u64::try_from(seal_after.as_millis()).unwrap_or(u64::MAX);
        blocking(move || inner.seal_round(now_ms(), ms)).await
    }

    /// Starts the sealer's thread: a round every quarter of `seal_after` (at most 5 s apart,
    /// at least 50 ms), until the store is dropped.
    fn start_sealer(&self, seal_after: std::time::Duration) -> Result<(), StoreError> {
        let weak = Arc::downgrade(&self.inner);
        let every = (seal_after / 4).clamp(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_secs(5),
        );
        let seal_after_ms = u64::try_from(seal_after.as_millis()).unwrap_or(u64::MAX);
        std::thread::Builder::new()
            .name("sealer".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(inner) = weak.upgrade() else { return };
                let _maintenance = inner.maintenance.blocking_lock();
                if let Err(e) = inner.seal_round(now_ms(), seal_after_ms) {
                    inner.seal_metrics.failures.inc();
                    tracing::warn!(error = %e.report(), "sealing failed; retrying");
                }
            })
            .map(|_| ())
            .map_err(|e| StoreError::unavailable_by("starting the sealer", e))
    }
}
