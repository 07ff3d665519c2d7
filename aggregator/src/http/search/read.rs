//! How one generation is read: the store's own scan (blocks as stored, on a thread of its own
//! for a large regex search) or chunk by chunk, the next read while this one is matched.

use super::*;

impl Scan<'_> {
    /// Scans one generation: through the store's own scan when it has one (large blocks as
    /// stored, no copy per line), else chunk by chunk, reading the next while matching this
    /// one.
    pub(super) fn generation(
        &mut self,
        store: &Arc<dyn Store>,
        g: &GenerationInfo,
        place: &Place<'_>,
    ) -> Result<Truncated, Stop> {
        let id = g.id;
        // A large generation is read on one thread while matched on this one, when matching
        // costs about as much as reading: a regex. A literal's SIMD prefilter is so much
        // faster than reading that the hand-over only costs (measured: 6.2 → 3.9 GB/s).
        let large = g.lines > PIPELINE_LINES && !self.q.literal;
        self.ring.clear();
        self.after = 0;
        self.written = None;
        let window = self.q.window;
        let must_contain = self.q.must_contain.as_deref();
        let mut outcome: Result<Truncated, Stop> = Ok(Truncated::No);
        let scanned = if large {
            self.generation_pipelined(store, id, place, &mut outcome)
        } else {
            store.scan_blocking(id, window, must_contain, &mut |data, lines| match self
                .visit(data, lines, place)
            {
                Ok(Truncated::No) => true,
                other => {
                    outcome = other;
                    false
                }
            })
        };
        if let Some(result) = scanned {
            self.skipped += result.map_err(Stop::Store)?;
            return outcome;
        }
        self.generation_by_chunks(store, id, place)
    }

    /// Matches one block of the store's scan, with the bookkeeping around it.
    pub(super) fn visit(
        &mut self,
        data: &[u8],
        lines: &[RawLine],
        place: &Place<'_>,
    ) -> Result<Truncated, Stop> {
        if self.gone() {
            return Err(Stop::Gone);
        }
        self.lines += lines.len() as u64;
        self.bytes += lines.iter().map(|l| (l.end - l.start) as u64).sum::<u64>();
        let view = View {
            data,
            lines,
            newline_separated: false,
        };
        match self.block(&view, place)? {
            Truncated::No if self.expired() => Ok(Truncated::Time),
            t => Ok(t),
        }
    }

    /// The store's scan on a thread of its own, handing each block over (buffers swapped,
    /// not copied) to be matched here; its buffers come back for reuse, and are kept for
    /// the next generation. Two blocks wait at most. When matching stops, the reader's next
    /// hand-over fails and its scan ends.
    pub(super) fn generation_pipelined(
        &mut self,
        store: &Arc<dyn Store>,
        id: u64,
        place: &Place<'_>,
        outcome: &mut Result<Truncated, Stop>,
    ) -> Option<Result<u64, StoreError>> {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Block>(2);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Block>();
        // Buffers kept from earlier generations: no fresh 4 MiB to fault in each time.
        for b in self.pool.drain(..) {
            let _ = empty_tx.send(b);
        }
        let window = self.q.window;
        let must_contain = self.q.must_contain.clone();
        let store = store.clone();
        std::thread::scope(|scope| {
            let reader = scope.spawn(move || {
                let scanned =
                    store.scan_blocking(id, window, must_contain.as_deref(), &mut |data, lines| {
                        let (mut d, mut l) = empty_rx.try_recv().unwrap_or_default();
                        std::mem::swap(data, &mut d);
                        std::mem::swap(lines, &mut l);
                        full_tx.send((d, l)).is_ok()
                    });
                (scanned, empty_rx)
            });
            for (data, lines) in full_rx.iter() {
                match self.visit(&data, &lines, place) {
                    Ok(Truncated::No) => {
                        let _ = empty_tx.send((data, lines));
                    }
                    other => {
                        *outcome = other;
                        break;
                    }
                }
            }
            drop(full_rx);
            match reader.join() {
                Ok((scanned, empty_rx)) => {
                    drop(empty_tx);
                    self.pool.extend(empty_rx.try_iter().take(POOL_BLOCKS));
                    scanned
                }
                Err(_) => Some(Err(StoreError::unavailable("search reader failed"))),
            }
        })
    }

    /// The scan through [`Store::search_chunk`], for backends without their own.
    pub(super) fn generation_by_chunks(
        &mut self,
        store: &Arc<dyn Store>,
        id: u64,
        place: &Place<'_>,
    ) -> Result<Truncated, Stop> {
        let window = self.q.window;
        let mut chunk = self
            .rt
            .block_on(store.search_chunk(id, 0, CHUNK_BYTES, window))
            .map_err(Stop::Store)?;
        let mut lines = Vec::new();
        loop {
            if self.gone() {
                return Err(Stop::Gone);
            }
            // Read ahead: the store decodes the next chunk on its own thread meanwhile.
            let next = chunk.next.map(|from| {
                let store = store.clone();
                self.rt
                    .spawn(async move { store.search_chunk(id, from, CHUNK_BYTES, window).await })
            });
            lines.clear();
            for (i, l) in chunk.lines.iter().enumerate() {
                lines.push(RawLine {
                    number: l.number,
                    start: l.start,
                    end: chunk.line_end(i),
                    partial: l.partial,
                    ts: l.ts,
                });
            }
            self.lines += lines.len() as u64;
            self.bytes += chunk.data.len() as u64;
            self.skipped += chunk.skipped;
            // A partial line is rendered without its `\n`, so the line after it would not
            // start a line for `^`, nor would it end one for `$`: then match line by line,
            // as the store's own scan does (the backends disagreed, issue 29.7).
            let newline_separated = !lines.iter().rev().skip(1).any(|l| l.partial);
            let view = View {
                data: &chunk.data,
                lines: &lines,
                newline_separated,
            };
            let t = self.block(&view, place)?;
            if t != Truncated::No {
                if let Some(n) = next {
                    n.abort();
                }
                return Ok(t);
            }
            if self.expired() {
                return Ok(Truncated::Time);
            }
            match next {
                Some(n) => {
                    chunk = self
                        .rt
                        .block_on(n)
                        .map_err(|e| Stop::Store(StoreError::unavailable_by("search reader", e)))?
                        .map_err(Stop::Store)?;
                }
                None => return Ok(Truncated::No),
            }
        }
    }
}
