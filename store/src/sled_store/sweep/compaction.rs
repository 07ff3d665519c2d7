//! Compaction: live buckets copied out of the chosen segments (each copy fsynced before
//! its index entries move), then the segments no durable index names deleted.

use super::*;

/// What [`Inner::copy`] appended for one index entry.
enum Copied {
    /// A raw bucket, at `at` in the append.
    Bucket { at: usize, len: usize },
    /// The entry's block, at `at` in the append to the block stream (shared with its other
    /// buckets).
    Block { at: usize, len: usize },
}

impl Inner {
    /// Marks `segments` as being compacted, under the exclusive gate: every writer that
    /// did not see the mark has applied its entries (they reach sled with the commit before
    /// the move's scan), and every writer after it rewrites a bucket with pieces there
    /// instead of adding a piece that would keep the old one named.
    pub(in crate::sled_store) fn start_compacting(&self, segments: Vec<u32>) {
        let _exclusive = self
            .gate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *self
            .compacting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = segments;
    }

    /// Ends [`Inner::start_compacting`]: writers add pieces anywhere again.
    pub(in crate::sled_store) fn stop_compacting(&self) {
        self.compacting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// Copies the live buckets of closed segments to the active one, in one scan of the
    /// index; returns bytes moved.
    pub(in crate::sled_store) fn move_live(&self, segments: &[u32]) -> Result<u64, StoreError> {
        let mut pending: Vec<(sled::IVec, IndexValue, sled::IVec)> = Vec::new();
        let mut pending_bytes = 0usize;
        let mut moved = 0u64;
        for item in self.db.scan_prefix([LINES]) {
            let (k, v) = item.map_err(unavailable)?;
            let Some(value) = IndexValue::decode(&v) else {
                return Err(StoreError::corrupt("unreadable index entry"));
            };
            if !value.pieces.iter().any(|l| segments.contains(&l.segment)) {
                continue;
            }
            pending_bytes += value.len() as usize;
            pending.push((k, value, v));
            if pending_bytes >= COPY_BATCH {
                moved += self.copy(&std::mem::take(&mut pending))?;
                pending_bytes = 0;
            }
        }
        moved += self.copy(&pending)?;
        Ok(moved)
    }

    /// Appends copies of `buckets` (a bucket in pieces becomes one), fsyncs them, then points
    /// each index entry at its copy unless a writer changed it meanwhile.
    ///
    /// The copies are durable before sled hears of them: sled writes its log out whenever a
    /// 512 KiB buffer fills, so moving a few thousand entries puts some on disk before any
    /// commit, and an entry naming bytes still in the page cache would, after a power cut,
    /// name nothing — and the old segment, no longer named, would be deleted. The reads, the
    /// append and its fsync run without the gate, so commits (acks) do not wait for them.
    fn copy(&self, buckets: &[(sled::IVec, IndexValue, sled::IVec)]) -> Result<u64, StoreError> {
        if buckets.is_empty() {
            return Ok(0);
        }
        let mut data = Vec::new();
        let mut readable = Vec::with_capacity(buckets.len());
        // Blocks copied so far, by old location: each is copied once, as it is (still
        // compressed), for all the buckets that name it.
        // Blocks go to the block stream, raw buckets to the raw one.
        let mut copied_blocks: HashMap<Loc, (usize, usize)> = HashMap::new();
        let mut block_data = Vec::new();
        for (key, value, raw) in buckets {
            let at = data.len();
            if value.sealed.is_some() {
                let block = value.pieces[0];
                let at = block_data.len();
                let (at, len) = match copied_blocks.get(&block) {
                    Some(&range) => range,
                    None => match self.segments.read(block) {
                        Ok(bytes) => {
                            block_data.extend_from_slice(&bytes);
                            copied_blocks.insert(block, (at, bytes.len()));
                            (at, bytes.len())
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_unavailable(e)),
                    },
                };
                readable.push(((key, value, raw), Copied::Block { at, len }));
                continue;
            }
            match self.read_bucket(key, value) {
                Ok(bytes) => data.extend_from_slice(&bytes),
                // Pieces that do not merge stay where they are (and so does their segment,
                // which the verifying scan keeps): one damaged bucket must not stop every
                // later compaction.
                Err(e) if e.is_corrupt() => {
                    tracing::warn!(error = %e.detail(), "a damaged bucket was left where it is");
                    self.damaged
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend(value.pieces.iter().map(|l| l.segment));
                    continue;
                }
                Err(e) => return Err(e),
            }
            readable.push((
                (key, value, raw),
                Copied::Bucket {
                    at,
                    len: data.len() - at,
                },
            ));
        }
        if readable.is_empty() {
            return Ok(0);
        }
        let (segment, start) = if data.is_empty() {
            (0, 0)
        } else {
            self.segments
                .append_durable(&data)
                .map_err(io_unavailable)?
        };
        let (block_segment, block_start) = if block_data.is_empty() {
            (0, 0)
        } else {
            self.segments
                .append_sealed(&block_data)
                .map_err(io_unavailable)?
        };
        // Shared like a writer, from the first entry moved to forgetting the recent ones.
        let _shared = self
            .gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut moved = 0;
        let mut blocks_counted = std::collections::HashSet::new();
        for ((key, old, value), copied) in readable {
            let (at, len) = match copied {
                Copied::Block { at, len } => {
                    // Every bucket of the block names the one copy, at its own slot.
                    let new = IndexValue {
                        pieces: vec![Loc {
                            segment: block_segment,
                            offset: block_start + at as u64,
                            len: u32::try_from(len).map_err(|_| {
                                StoreError::corrupt(format!("a block of {len} bytes"))
                            })?,
                        }],
                        ..old.clone()
                    };
                    let swapped = self
                        .db
                        .compare_and_swap(key, Some(&value[..]), Some(new.encode()))
                        .map_err(unavailable)?;
                    if swapped.is_ok() && blocks_counted.insert(at) {
                        moved += len as u64;
                    }
                    continue;
                }
                Copied::Bucket { at, len } => (at, len),
            };
            let offset = start + (at + len) as u64;
            let len = u32::try_from(len)
                .map_err(|_| StoreError::corrupt(format!("a bucket of {len} bytes, over 4 GiB")))?;
            // Merged pieces: the offsets present, from the merged bucket.
            let present = match old.present {
                Some(_) if old.pieces.len() > 1 => {
                    crate::bucket::decode(&data[at..at + len as usize])
                        .map(|entries| offsets(&entries))
                }
                kept => kept,
            };
            // The new location, the receive times kept as they were; swapped only if the
            // value is still exactly what was read.
            let new = IndexValue::whole(
                Loc {
                    segment,
                    offset: offset - u64::from(len),
                    len,
                },
                old.first_ms,
                old.last_ms,
                present,
            );
            let swapped = self
                .db
                .compare_and_swap(key, Some(&value[..]), Some(new.encode()))
                .map_err(unavailable)?;
            if swapped.is_ok() {
                moved += u64::from(len);
            }
        }
        // Before the gate is let go: a writer merging after this reads the new locations.
        // One that read an old one meanwhile still finds its segment (deleted only after a
        // commit, which waits for it), and its newer value supersedes the copy; if that value
        // still names pieces in the segment, the segment is kept (see `remove_unreferenced`).
        self.forget_recent();
        Ok(moved)
    }

    /// Deletes the segments that one scan of the (durable) index finds no entry naming;
    /// returns how many were deleted and their bytes.
    pub(in crate::sled_store) fn remove_unreferenced(
        &self,
        segments: &[u32],
    ) -> Result<(u64, u64), StoreError> {
        let mut referenced = std::collections::HashSet::new();
        for item in self.db.scan_prefix([LINES]) {
            let (_, v) = item.map_err(unavailable)?;
            let Some(value) = IndexValue::decode(&v) else {
                return Err(StoreError::corrupt("unreadable index entry"));
            };
            for l in value
                .pieces
                .iter()
                .filter(|l| segments.contains(&l.segment))
            {
                referenced.insert(l.segment);
            }
        }
        let sizes: HashMap<u32, u64> = self
            .segments
            .sizes()
            .map_err(io_unavailable)?
            .into_iter()
            .collect();
        let (mut count, mut bytes) = (0, 0);
        for &segment in segments {
            if referenced.contains(&segment) {
                let damaged = self
                    .damaged
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .contains(&segment);
                if damaged {
                    tracing::warn!(segment, "segment holds a damaged bucket; kept");
                } else {
                    // Not expected since writers rewrite buckets of compacting segments; if
                    // it happens, the next sweep tries again rather than waiting for growth.
                    tracing::warn!(segment, "segment still referenced after compaction; kept");
                    self.revisit.store(true, Ordering::SeqCst);
                }
                continue;
            }
            self.segments.remove(segment).map_err(io_unavailable)?;
            count += 1;
            bytes += sizes.get(&segment).copied().unwrap_or(0);
        }
        Ok((count, bytes))
    }
}
