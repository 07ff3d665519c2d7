//! Writes: a file batch merged into its buckets, appended to the active segment, its index
//! entries added to the pending ones under the generation's stripe lock and the shared gate.

use super::*;

/// A merged bucket waiting in an append: where it sits in the data, and when its first
/// line was received.
struct Placed {
    pub(super) bucket: u64,
    pub(super) offset: usize,
    pub(super) len: usize,
    pub(super) first_ms: u64,
    /// The latest time of its lines, or when it was last written if later.
    pub(super) last_ms: u64,
    /// The bucket's pieces before this one (empty when this one is the whole bucket).
    pub(super) earlier: Vec<Loc>,
    pub(super) present: Option<u128>,
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

        // Every line of the batch is stamped with when it was received.
        let grouped = bucket::group(&fb.lines, now);
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
        let mut first_bucket: Option<u64> = None;
        for (b, new) in grouped.buckets {
            first_bucket = Some(first_bucket.map_or(b, |f: u64| f.min(b)));
            let bucket_key = line_key(meta.id, b);
            let old = match self.latest(&bucket_key)? {
                Some(v) => Some(IndexValue::decode(&v).ok_or_else(|| {
                    StoreError::corrupt(format!("index of bucket {b} of generation {}", meta.id))
                })?),
                None => None,
            };
            let new_offsets = keys::offsets(&new);
            // The bucket's span covers its lines' own times (a sender's time may be earlier
            // than now, or later) and when it was last written (what sealing waits on).
            let (lo, hi) = bucket::time_span(&new);
            let last_ms = hi.max(now).max(old.as_ref().map_or(0, |v| v.last_ms));
            // At most what the piece's encoding takes (a header is at most 11 bytes).
            let piece_bytes: u64 = new.iter().map(|e| e.content.len() as u64 + 11).sum();
            let (bytes, added, first_ms, earlier, present) = match old {
                // New lines only, and room for a piece: stored as one, nothing read back —
                // the bucket's last lines too. The sealer soon makes a full bucket part of a
                // block, reading its pieces once; rewriting it whole first (as before)
                // wrote every line of a bucket filled a few at a time twice.
                Some(v)
                    if v.present.is_some_and(|p| p & new_offsets == 0)
                        && v.pieces.len() < keys::MAX_PIECES
                        && v.len() + piece_bytes <= keys::MAX_PIECES_BYTES
                        && !v.pieces.iter().any(|l| compacting.contains(&l.segment)) =>
                {
                    let present = v.present.map(|p| p | new_offsets);
                    let piece = bucket::merge(&[], &new).0;
                    let first = v.first_ms.min(lo);
                    (piece, new.len() as u64, first, v.pieces, present)
                }
                // Lines already there (last write wins), too many pieces, a bucket stored
                // before pieces existed, or pieces in a segment being compacted: read back,
                // merged, rewritten as one piece.
                Some(v) => {
                    let stored = self.read_bucket(&bucket_key, &v)?;
                    let old_entries = bucket::decode(&stored).ok_or_else(|| {
                        StoreError::corrupt(format!("bucket {b} of generation {}", meta.id))
                    })?;
                    let present = keys::offsets(&old_entries) | new_offsets;
                    let (merged, added) = bucket::merge(&old_entries, &new);
                    (merged, added, v.first_ms.min(lo), Vec::new(), Some(present))
                }
                None => {
                    let piece = bucket::merge(&[], &new).0;
                    let first = lo.min(now);
                    (
                        piece,
                        new.len() as u64,
                        first,
                        Vec::new(),
                        Some(new_offsets),
                    )
                }
            };
            stats.new_lines += added;
            meta.lines += added;
            placed.push(Placed {
                bucket: b,
                offset: data.len(),
                len: bytes.len(),
                first_ms,
                last_ms,
                earlier,
                present,
            });
            data.extend_from_slice(&bytes);
            if data.len() >= APPLY_CHUNK_BYTES || placed.len() >= APPLY_CHUNK_BUCKETS {
                self.append_chunk(&key, &meta, &mut batch, &mut data, &mut placed)?;
            }
        }
        self.append_chunk(&key, &meta, &mut batch, &mut data, &mut placed)?;
        if let Some(first) = first_bucket {
            self.mark_unsealed(meta.id, first);
        }
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

    /// Forgets the recently committed values of `keys` (not pending ones: those are newer
    /// than anything in sled), for a change to sled outside a commit that touched only them.
    pub(super) fn forget<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) {
        let mut o = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for k in keys {
            o.recent.remove(k);
            o.older.remove(k);
        }
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
            self.seal_metrics.note_written(data.len());
            for p in placed.drain(..) {
                let len = u32::try_from(p.len).map_err(|_| {
                    StoreError::corrupt(format!(
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
                    last_ms: p.last_ms,
                    present: p.present,
                    sealed: None,
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
}
