//! Retention and compaction for the sled store: the periodic sweep.
//!
//! 1. Generations whose last write is older than `retention` are dropped, then — while the
//!    store's live bytes exceed 90 % of `max_disk_bytes` — the generations written longest
//!    ago. Dropping removes a generation's metadata and index entries in one batch. A
//!    generation still written to loses its oldest buckets whose lines are all older than
//!    `retention` (trimming: line numbers stay, the first kept line moves on).
//! 2. Dropped generations and superseded bucket versions leave garbage in the segment files.
//!    A segment that is mostly garbage (or any garbage while over `max_disk_bytes`) is
//!    compacted: its live buckets are appended to the active segment, each index entry moved
//!    with a compare-and-swap (a writer that merged into the bucket meanwhile wins, and the
//!    copy becomes garbage), then — after a commit, so nothing durable or in flight still
//!    names it — the file is deleted.
//!
//! Crash safety: a segment is deleted only after a durable index that no longer names it has
//! been checked by a full scan; a crash before that leaves a garbage-only segment for the
//! next sweep. A power cut cannot leave a moved entry naming a copy that never reached the
//! disk: each copy is fsynced before its entries move.
//!
//! This module chooses what a sweep does; `retention` drops generations, `compaction` moves
//! live buckets out of segments and deletes them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::keys::{
    file_prefix, id_of_line_key, line_key, offsets, parse_file_key, IndexValue, Meta, FILE, HOST,
    LINES,
};
use super::segments::Loc;
use super::{io_unavailable, unavailable, Inner};
use crate::{RetentionPolicy, StoreError, SweepReport};

/// A segment with at least this share of garbage is compacted even below `max_disk_bytes`.
const GARBAGE_RATIO: f64 = 0.5;
/// Live buckets are copied in appends of about this size.
const COPY_BATCH: usize = 1 << 20;
/// Segments compacted per scan of the index: few enough that space comes back early when
/// many are due (each may be 256 MiB), many enough that a large store is not scanned per
/// segment.
pub(super) const SEGMENTS_PER_PASS: usize = 8;

/// Live bytes by generation id, by segment and by age, from one scan of the index.
#[derive(Debug, Default)]
struct Usage {
    by_id: HashMap<u64, u64>,
    by_segment: HashMap<u32, u64>,
    /// Bytes by the age of their bucket's last line ([`age_bin`]): which data is oldest,
    /// whatever file it is in, for `max_disk_bytes`.
    by_age: std::collections::BTreeMap<u32, u64>,
    live: u64,
}

/// Ages are binned on a log scale, 1 % wide: a few thousand bins from a millisecond to
/// decades, so the scan's memory does not grow with the store.
const AGE_BIN_RATIO: f64 = 1.01;

/// The bin of an age in ms.
fn age_bin(age_ms: u64) -> u32 {
    ((age_ms as f64 + 1.0).ln() / AGE_BIN_RATIO.ln()) as u32
}

/// The youngest age (ms) of a bin.
fn bin_start(bin: u32) -> u64 {
    (AGE_BIN_RATIO.powi(bin as i32) - 1.0).max(0.0) as u64
}

/// A generation as the sweep sees it.
#[derive(Debug)]
struct Generation {
    key: Vec<u8>,
    host: String,
    meta: Meta,
}

mod compaction;
mod retention;
#[cfg(test)]
pub(super) mod tests;

impl Inner {
    fn usage(&self, now_ms: u64) -> Result<Usage, StoreError> {
        let mut u = Usage::default();
        // A block is counted once, however many of a generation's buckets it holds.
        let mut blocks: (u64, std::collections::HashSet<Loc>) = (u64::MAX, Default::default());
        for item in self.db.scan_prefix([LINES]) {
            let (k, v) = item.map_err(unavailable)?;
            let (Some(value), Some(id)) = (IndexValue::decode(&v), id_of_line_key(&k)) else {
                return Err(StoreError::corrupt("unreadable index entry"));
            };
            if value.sealed.is_some() {
                if blocks.0 != id {
                    blocks = (id, Default::default());
                }
                if !blocks.1.insert(value.pieces[0]) {
                    continue;
                }
            }
            let age = age_bin(now_ms.saturating_sub(value.last_ms));
            for loc in &value.pieces {
                let len = u64::from(loc.len);
                *u.by_id.entry(id).or_default() += len;
                *u.by_segment.entry(loc.segment).or_default() += len;
                *u.by_age.entry(age).or_default() += len;
                u.live += len;
            }
        }
        Ok(u)
    }

    /// Trims every generation of `gens` to `cutoff` (see `trim_generation`), logging each
    /// one trimmed and `why`; the lines removed.
    fn trim_all(&self, gens: &[Generation], cutoff: u64, why: &str) -> Result<u64, StoreError> {
        let mut trimmed = 0u64;
        for g in gens {
            let lines = self.trim_generation(g, cutoff)?;
            if lines > 0 {
                tracing::info!(
                    host = %g.host,
                    generation_id = g.meta.id,
                    lines,
                    why,
                    "trimmed the oldest lines of a generation still written to"
                );
            }
            trimmed += lines;
        }
        Ok(trimmed)
    }

    /// Drops what the policy says, then lists the segments worth compacting (fewest live
    /// bytes first) and closes the active one if it is among them.
    pub(super) fn retire(
        &self,
        policy: RetentionPolicy,
        now_ms: u64,
        report: &mut SweepReport,
    ) -> Result<Vec<u32>, StoreError> {
        let segment_bytes = self.segments.size();
        let index = self.db.size_on_disk().map_err(unavailable)?;
        let near_cap = policy
            .disk_target()
            .is_some_and(|target| index + segment_bytes > target);
        // A full index scan costs seconds on a large store: only when something changed.
        let grown = segment_bytes > self.swept_segment_bytes.load(Ordering::SeqCst) / 4 * 5;
        let (mut drop, keep) = self.expired(policy, now_ms)?;
        // Generations still written to lose their buckets older than the retention too, so a
        // file written without pause and never rotated does not grow the store for ever.
        let trimmed = match policy.retention {
            Some(r) => {
                let cutoff = now_ms.saturating_sub(r.as_millis() as u64);
                self.trim_all(&keep, cutoff, "retention")?
            }
            None => 0,
        };
        report.lines_trimmed += trimmed;
        let revisit = self.revisit.swap(false, Ordering::SeqCst) || trimmed > 0;
        if drop.is_empty() && !near_cap && !grown && !revisit {
            return Ok(Vec::new());
        }
        let mut usage = self.usage(now_ms)?;
        let cap_cutoff = self.over_cap(policy, &usage, &mut drop, &keep, now_ms)?;
        let mut dropped = 0u64;
        for g in &drop {
            if !self.drop_generation(g)? {
                tracing::debug!(
                    host = %g.host,
                    generation_id = g.meta.id,
                    "written while the sweep ran; kept"
                );
                continue;
            }
            dropped += 1;
            tracing::info!(
                host = %g.host,
                generation_id = g.meta.id,
                lines = g.meta.lines,
                "retention dropped a generation"
            );
        }
        report.generations_dropped += dropped;
        // Over `max_disk_bytes`, the generations still written to lose their data older than
        // the cut too, never their newest lines.
        // (Those wholly older are in `drop`: their trim finds nothing left.)
        let cap_trimmed = match cap_cutoff {
            Some(cutoff) => self.trim_all(&keep, cutoff, "max_disk_bytes")?,
            None => 0,
        };
        report.lines_trimmed += cap_trimmed;
        if dropped > 0 || cap_trimmed > 0 {
            usage = self.usage(now_ms)?;
        }
        let over_cap = policy
            .max_disk_bytes
            .is_some_and(|max| self.db.size_on_disk().unwrap_or(0) + self.segments.size() > max);
        let mut candidates: Vec<(u64, u32)> = Vec::new();
        for (segment, len) in self.segments.sizes().map_err(io_unavailable)? {
            let live = usage.by_segment.get(&segment).copied().unwrap_or(0);
            let garbage = len.saturating_sub(live);
            let worth = len > 0
                && (live == 0
                    || garbage as f64 >= GARBAGE_RATIO * len as f64
                    || (over_cap && garbage > 0));
            if worth {
                candidates.push((live, segment));
            }
        }
        candidates.sort_unstable();
        self.swept_segment_bytes
            .store(self.segments.size(), Ordering::SeqCst);
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        self.start_compacting(candidates.iter().map(|&(_, s)| s).collect());
        for &(_, segment) in &candidates {
            self.segments
                .close_if_active(segment)
                .map_err(io_unavailable)?;
        }
        Ok(candidates.into_iter().map(|(_, s)| s).collect())
    }
}
