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
