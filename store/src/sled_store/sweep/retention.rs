//! Retention: which generations a sweep drops (expired, then — over `max_disk_bytes` —
//! those whose data is all older than the cut that brings the store under it), dropping
//! one, and trimming a live one's old buckets.

use super::*;

impl Inner {
    pub(super) fn all_generations(&self) -> Result<Vec<Generation>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix([FILE]) {
            let (k, v) = item.map_err(unavailable)?;
            let (host, _, _) =
                parse_file_key(&k).ok_or_else(|| StoreError::corrupt("unreadable file key"))?;
            out.push(Generation {
                key: k.to_vec(),
                host,
                meta: Meta::decode(&v)?,
            });
        }
        Ok(out)
    }

    /// Generations not written for `retention`, least recently written first.
    pub(super) fn expired(
        &self,
        policy: RetentionPolicy,
        now_ms: u64,
    ) -> Result<(Vec<Generation>, Vec<Generation>), StoreError> {
        let mut gens = self.all_generations()?;
        gens.sort_by_key(|g| (g.meta.last_write_ms, g.meta.id));
        Ok(gens.into_iter().partition(|g| {
            policy
                .retention
                .is_some_and(|r| g.meta.last_write_ms.saturating_add(r.as_millis() as u64) < now_ms)
        }))
    }

    /// Over 90 % of the disk cap: the age before which data goes so that live data and the
    /// index fit — the oldest data first, whatever file it is in. Adds to `drop` the
    /// generations of `keep` last written before it (all their data is older) that are not
    /// their file's newest; returns it, for the sweep to trim the others' older buckets
    /// (never a generation's last bucket: a file's newest lines stay). `None` when under the
    /// cap.
    pub(super) fn over_cap(
        &self,
        policy: RetentionPolicy,
        usage: &Usage,
        drop: &mut Vec<Generation>,
        keep: &[Generation],
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let Some(target) = policy.disk_target() else {
            return Ok(None);
        };
        let index = self.db.size_on_disk().map_err(unavailable)?;
        let bytes_of = |g: &Generation| usage.by_id.get(&g.meta.id).copied().unwrap_or(0);
        let live = usage.live - drop.iter().map(bytes_of).sum::<u64>();
        if live + index <= target {
            return Ok(None);
        }
        let needed = live + index - target;
        // Oldest bins first, until they hold what must go.
        let mut freed = 0u64;
        let mut cut_age = 0u64;
        for (&bin, &bytes) in usage.by_age.iter().rev() {
            freed += bytes;
            cut_age = bin_start(bin);
            if freed >= needed {
                break;
            }
        }
        let cutoff = now_ms.saturating_sub(cut_age);
        // A file's newest generation is never dropped here, however old: it is trimmed,
        // which keeps its last bucket — the newest lines of a live file stay.
        let mut newest: HashMap<(String, String), u64> = HashMap::new();
        for g in keep {
            if let Some((host, file, _)) = parse_file_key(&g.key) {
                let id = newest.entry((host, file)).or_default();
                *id = (*id).max(g.meta.id);
            }
        }
        let is_newest = |g: &Generation| {
            parse_file_key(&g.key).and_then(|(host, file, _)| newest.get(&(host, file)).copied())
                == Some(g.meta.id)
        };
        for g in keep {
            if g.meta.last_write_ms < cutoff && !is_newest(g) {
                drop.push(Generation {
                    key: g.key.clone(),
                    host: g.host.clone(),
                    meta: g.meta,
                });
            }
        }
        Ok(Some(cutoff))
    }

    /// Trims a generation still written to: removes the index entries of its oldest buckets
    /// whose every line is older than `cutoff_ms` (by the bucket's time span), from its first
    /// bucket up to the first younger one, never its last bucket; returns the lines removed.
    /// Their bytes become garbage for compaction (a sealed block once none of its buckets is
    /// named). Line numbers stay: a download starts at the first kept line.
    ///
    /// Runs under the generation's stripe lock and the gate (shared), so no commit is in
    /// progress and no writer of it applies meanwhile; a generation with a write waiting for
    /// its commit is left to the next sweep (its entries are pending, not in sled yet).
    pub(super) fn trim_generation(
        &self,
        g: &Generation,
        cutoff_ms: u64,
    ) -> Result<u64, StoreError> {
        if g.meta.first_write_ms >= cutoff_ms {
            return Ok(0);
        }
        let _locks = self.lock_generation(&g.key);
        let waiting = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pending
            .contains_key(&g.key);
        if waiting {
            return Ok(0);
        }
        let Some(v) = self.db.get(&g.key).map_err(unavailable)? else {
            return Ok(0);
        };
        let mut meta = Meta::decode(&v)?;
        let last_bucket = meta.max_line / crate::bucket::LINES_PER_BUCKET;
        let mut batch = sled::Batch::default();
        let mut removed: Vec<Vec<u8>> = Vec::new();
        let mut lines = 0u64;
        for item in self.db.scan_prefix(&line_key(meta.id, 0)[..9]) {
            let (k, v) = item.map_err(unavailable)?;
            let value = IndexValue::decode(&v)
                .ok_or_else(|| StoreError::corrupt("unreadable index entry"))?;
            let bucket = k
                .get(9..17)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StoreError::corrupt("unreadable index key"))?;
            if value.last_ms >= cutoff_ms || bucket >= last_bucket {
                break;
            }
            lines += match value.present {
                Some(p) if value.sealed.is_none() => u64::from(p.count_ones()),
                _ => {
                    let stored = self.read_bucket(&k, &value)?;
                    crate::bucket::decode(&stored)
                        .ok_or_else(|| {
                            StoreError::corrupt(format!(
                                "bucket {bucket} of generation {}",
                                meta.id
                            ))
                        })?
                        .len() as u64
                }
            };
            batch.remove(k.as_ref());
            removed.push(k.to_vec());
        }
        if removed.is_empty() {
            return Ok(0);
        }
        meta.lines = meta.lines.saturating_sub(lines);
        batch.insert(g.key.as_slice(), meta.encode().to_vec());
        self.db.apply_batch(batch).map_err(unavailable)?;
        // Under the generation's lock still: no writer has read the removed entries.
        self.forget(removed.iter().map(Vec::as_slice).chain([g.key.as_slice()]));
        Ok(lines)
    }

    /// Removes a generation's metadata and index entries in one batch, unless it was
    /// written since the sweep listed it; returns whether it was dropped.
    ///
    /// The check and the removal run under the generation's stripe lock, which every write
    /// holds while it applies, so a write either lands first (the metadata changed: the
    /// generation is kept) or after (it finds no generation and starts a new one). Without
    /// the check, a write landing between the listing and the drop was acknowledged and then
    /// deleted (issue 11.1).
    pub(super) fn drop_generation(&self, g: &Generation) -> Result<bool, StoreError> {
        // A write waiting for its commit has its new metadata pending: `latest` sees it.
        let _locks = self.lock_generation(&g.key);
        match self.latest(&g.key)? {
            Some(v) if Meta::decode(&v)? == g.meta => {}
            _ => return Ok(false),
        }
        let mut batch = sled::Batch::default();
        batch.remove(g.key.as_slice());
        for item in self.db.scan_prefix(&line_key(g.meta.id, 0)[..9]) {
            let (k, _) = item.map_err(unavailable)?;
            batch.remove(k);
        }
        self.db.apply_batch(batch).map_err(unavailable)?;
        // Under the generation's lock still: no writer can have read the dropped entries.
        self.forget_recent();
        // The host goes from the host list with its last file; a writer creating a file of
        // the host meanwhile puts it back (checked after the removal, so never lost).
        let files_of_host = file_prefix(&g.host, None);
        if self.db.scan_prefix(&files_of_host).next().is_none() {
            let mut host_key = vec![HOST];
            host_key.extend_from_slice(g.host.as_bytes());
            self.db.remove(&host_key).map_err(unavailable)?;
            if self.db.scan_prefix(&files_of_host).next().is_some() {
                self.db.insert(host_key, &[][..]).map_err(unavailable)?;
            }
        }
        Ok(true)
    }
}
