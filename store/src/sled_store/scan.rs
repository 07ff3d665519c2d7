//! The search's scan of a generation: runs of buckets adjacent in a segment read with one
//! `pread` and handed over as they are stored, big buckets through the download cursor.

use super::*;

/// Buckets adjacent in a segment are read together up to this many bytes.
const SCAN_RUN_BYTES: usize = 4 << 20;
/// A bucket larger than this is scanned through a cursor, never read whole.
const SCAN_BIG_BUCKET: usize = 1 << 20;

/// The kinds of bucket a scan gathers before visiting them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Raw buckets adjacent in a segment, read with one `pread`.
    Run,
    /// Buckets in pieces, merged in memory, back to back.
    Merged,
    /// Sealed buckets of one block.
    Sealed,
}

/// What a scan has gathered and not yet visited. Only one kind at a time holds anything
/// (gathering one kind visits the others first), so lines go to the visitor in order.
#[derive(Default)]
struct Gather {
    run: Vec<(u64, Loc)>,
    run_bytes: usize,
    merged: Vec<u8>,
    merged_lines: Vec<crate::RawLine>,
    /// The block and its buckets' (slot, bucket).
    sealed: Option<(Loc, Vec<(u32, u64)>)>,
    /// The buffers runs and blocks are read into.
    buf: Vec<u8>,
    lines: Vec<crate::RawLine>,
    /// Buckets skipped: outside the window, or in a block whose filter rules them out.
    skipped: u64,
}

impl Inner {
    /// A search's scan of one generation: the index walked in line order, adjacent buckets
    /// read in one `pread` of up to [`SCAN_RUN_BYTES`], each block handed to `visit` as it
    /// is on disk with its lines' positions; sealed buckets a block at a time, straight from
    /// its decompression, unless its filter shows no line holds `must_contain`. Returns the
    /// buckets skipped (by `window`, or by a block's filter).
    pub(super) fn scan(
        &self,
        id: u64,
        window: Option<(u64, u64)>,
        must_contain: Option<&[u8]>,
        visit: &mut crate::Visitor<'_>,
    ) -> Result<u64, StoreError> {
        let mut g = Gather::default();
        for item in self.db.range(line_key(id, 0)..=line_key(id, u64::MAX)) {
            let (k, v) = item.map_err(unavailable)?;
            let bucket = u64::from_be_bytes(k[9..17].try_into().unwrap_or_default());
            let value = IndexValue::decode(&v).ok_or_else(|| {
                StoreError::corrupt(format!("index of bucket {bucket} of generation {id}"))
            })?;
            if let Some((since, until)) = window {
                if value.first_ms > until || value.last_ms < since {
                    g.skipped += 1;
                    continue;
                }
            }
            if let Some(sealed) = value.sealed {
                // Gathered with the next buckets of the same block.
                let block = value.pieces[0];
                let other_block = g.sealed.as_ref().is_some_and(|(l, _)| *l != block);
                if (other_block
                    && !self.visit_gathered(id, must_contain, &mut g, Kind::Run, visit)?)
                    || !self.visit_gathered(id, must_contain, &mut g, Kind::Sealed, visit)?
                {
                    return Ok(g.skipped);
                }
                g.sealed
                    .get_or_insert_with(|| (block, Vec::new()))
                    .1
                    .push((sealed.slot, bucket));
                continue;
            }
            let loc = match value.pieces.as_slice() {
                [one] => *one,
                _ => {
                    // In pieces: merged in memory, gathered with the next buckets in pieces.
                    if !self.visit_gathered(id, must_contain, &mut g, Kind::Merged, visit)? {
                        return Ok(g.skipped);
                    }
                    let bytes = self.read_bucket(&k, &value)?;
                    let at = g.merged.len();
                    g.merged.extend_from_slice(&bytes);
                    let base = bucket * LINES_PER_BUCKET;
                    bucket::index_into(&g.merged, at, bytes.len(), base, &mut g.merged_lines)
                        .ok_or_else(|| {
                            StoreError::corrupt(format!("bucket {bucket} of generation {id}"))
                        })?;
                    if g.merged.len() >= SCAN_RUN_BYTES
                        && !self.visit_gathered(id, must_contain, &mut g, Kind::Run, visit)?
                    {
                        return Ok(g.skipped);
                    }
                    continue;
                }
            };
            if !self.visit_gathered(id, must_contain, &mut g, Kind::Run, visit)? {
                return Ok(g.skipped);
            }
            let adjacent = g.run.last().is_some_and(|(_, l)| {
                l.segment == loc.segment && l.offset + u64::from(l.len) == loc.offset
            });
            let big = loc.len as usize > SCAN_BIG_BUCKET;
            if !g.run.is_empty()
                && (big || !adjacent || g.run_bytes + loc.len as usize > SCAN_RUN_BYTES)
                && !self.visit_gathered(id, must_contain, &mut g, Kind::Merged, visit)?
            {
                return Ok(g.skipped);
            }
            if big {
                // Never read whole (a bucket of long lines can be 128 times their size):
                // through the download's cursor, a chunk at a time.
                if !self.scan_big_bucket(id, bucket, visit)? {
                    return Ok(g.skipped);
                }
                continue;
            }
            g.run_bytes += loc.len as usize;
            g.run.push((bucket, loc));
        }
        self.visit_gathered(id, must_contain, &mut g, Kind::Run, visit)?;
        self.visit_gathered(id, must_contain, &mut g, Kind::Merged, visit)?;
        Ok(g.skipped)
    }

    /// Visits what is gathered of every kind but `keep`; false when the visitor stopped.
    fn visit_gathered(
        &self,
        id: u64,
        must_contain: Option<&[u8]>,
        g: &mut Gather,
        keep: Kind,
        visit: &mut crate::Visitor<'_>,
    ) -> Result<bool, StoreError> {
        if keep != Kind::Run && !g.run.is_empty() {
            let run = std::mem::take(&mut g.run);
            g.run_bytes = 0;
            let go_on = self.scan_run(id, &run, &mut g.buf, &mut g.lines, visit)?;
            g.run = run;
            g.run.clear();
            if !go_on {
                return Ok(false);
            }
        }
        if keep != Kind::Merged && !g.merged.is_empty() {
            let go_on = visit(&mut g.merged, &mut g.merged_lines);
            g.merged.clear();
            g.merged_lines.clear();
            if !go_on {
                return Ok(false);
            }
        }
        if keep != Kind::Sealed {
            if let Some((block, slots)) = g.sealed.take() {
                return self.scan_sealed(id, block, &slots, must_contain, g, visit);
            }
        }
        Ok(true)
    }

    /// Visits a bucket too big to read whole, [`SCAN_BIG_BUCKET`] at a time (plus at most
    /// one line); false when the visitor stopped.
    pub(super) fn scan_big_bucket(
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
                        ts: l.ts,
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

    /// Visits the buckets `slots` (slot, bucket) of the sealed block at `block`, decompressed
    /// straight into `data`, unless its filter shows it holds no `must_contain` (then they
    /// count as skipped); false when the visitor stopped.
    fn scan_sealed(
        &self,
        id: u64,
        block: Loc,
        slots: &[(u32, u64)],
        must_contain: Option<&[u8]>,
        g: &mut Gather,
        visit: &mut crate::Visitor<'_>,
    ) -> Result<bool, StoreError> {
        let (data, lines) = (&mut g.buf, &mut g.lines);
        match self.segments.read(block) {
            Ok(stored) if must_contain.is_some_and(|lit| !blocks::may_contain(&stored, lit)) => {
                // The filter says no line here holds the literal: not even decompressed.
                g.skipped += slots.len() as u64;
                return Ok(true);
            }
            Ok(stored) => blocks::scan_lines(&stored, slots, data, lines).map_err(|e| {
                self.seal_metrics.corrupt.inc();
                StoreError::corrupt_by(format!("a block of generation {id}"), e)
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Compaction moved the block and deleted its segment meanwhile: each bucket
                // where the index points now.
                data.clear();
                lines.clear();
                for &(_, bucket) in slots {
                    let key = line_key(id, bucket);
                    let Some(v) = self.db.get(key).map_err(unavailable)? else {
                        continue;
                    };
                    let value = IndexValue::decode(&v).ok_or_else(|| {
                        StoreError::corrupt(format!("index of bucket {bucket} of generation {id}"))
                    })?;
                    let bytes = self.read_bucket(&key, &value)?;
                    let at = data.len();
                    data.extend_from_slice(&bytes);
                    bucket::index_into(data, at, bytes.len(), bucket * LINES_PER_BUCKET, lines)
                        .ok_or_else(|| {
                            StoreError::corrupt(format!("bucket {bucket} of generation {id}"))
                        })?;
                }
            }
            Err(e) => return Err(io_unavailable(e)),
        }
        Ok(visit(data, lines))
    }

    /// Reads one run of adjacent buckets and visits it; false when the visitor stopped.
    pub(super) fn scan_run(
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
                .ok_or_else(|| StoreError::corrupt(format!("bucket {bucket} of generation {id}")))
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
                        StoreError::corrupt(format!("index of bucket {bucket} of generation {id}"))
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
