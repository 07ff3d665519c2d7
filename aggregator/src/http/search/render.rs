//! The output: a match (or context line) as NDJSON or grep's text form, the summary, and
//! sending it to the client within the stall guard.

use super::*;

impl Scan<'_> {
    /// Renders one result line (a match, or context).
    pub(super) fn emit(
        &mut self,
        place: &Place<'_>,
        number: u64,
        content: &[u8],
        partial: bool,
        ts: Option<u64>,
        context: bool,
    ) -> Result<(), Stop> {
        self.written = Some(number);
        if self.q.ranked.as_ref().is_some_and(|r| !r.admits(ts)) {
            return Ok(());
        }
        let start = self.out.len();
        if self.text {
            // grep's form: `host:file:line:content`, context lines with `-`.
            let sep = if context { '-' } else { ':' };
            self.out.extend_from_slice(
                format!("{}:{}{sep}{number}{sep}", place.host, place.file).as_bytes(),
            );
            self.out.extend_from_slice(content);
            self.out.push(b'\n');
        } else {
            let mut v = serde_json::json!({
                "host": place.host,
                "file": place.file,
                "generation": place.generation,
                "line": number,
            });
            crate::http::line_json::set_content(&mut v, content, partial);
            crate::http::line_json::set_time(&mut v, ts);
            if context {
                v["context"] = true.into();
            }
            self.out.extend_from_slice(v.to_string().as_bytes());
            self.out.push(b'\n');
        }
        if let Some(ranked) = &self.q.ranked {
            // Ordered by time: kept (the best `limit`), sent once the scan is done.
            ranked.offer(ts, self.out.split_off(start));
            return Ok(());
        }
        if !context {
            self.match_ends.push(self.out.len());
        }
        if self.out.len() >= OUT_BYTES && !self.flush() {
            return Err(Stop::Gone);
        }
        Ok(())
    }

    /// The last NDJSON object: what was scanned and whether the answer is complete.
    pub(super) fn summary(&mut self, truncated: Truncated) {
        let v = serde_json::json!({
            "summary": {
                "matches": self.matches,
                "lines_scanned": self.lines,
                "bytes_scanned": self.bytes,
                "buckets_skipped": self.skipped,
                "truncated": truncated != Truncated::No,
                "reason": match truncated {
                    Truncated::No => serde_json::Value::Null,
                    Truncated::Limit => "limit".into(),
                    Truncated::Time => "time limit (search.timeout)".into(),
                    Truncated::Memory => "memory: the results that fit in 32 MiB".into(),
                },
                "elapsed_ms": self.started.elapsed().as_millis() as u64,
            }
        });
        self.out.extend_from_slice(v.to_string().as_bytes());
        self.out.push(b'\n');
    }

    /// With `order=newest|oldest`: sends the results kept, best first, once the scan is done;
    /// says whether they were cut (by the limit, or memory) when the scan itself was not.
    pub(super) fn ranked_out(&mut self, scanned: Truncated) -> Result<Truncated, Stop> {
        let Some(ranked) = &self.q.ranked else {
            return Ok(scanned);
        };
        let (items, dropped) = ranked.take();
        for item in items {
            self.out.extend_from_slice(&item);
            if self.out.len() >= OUT_BYTES && !self.flush() {
                return Err(Stop::Gone);
            }
        }
        Ok(match scanned {
            Truncated::No if dropped > 0 => Truncated::Memory,
            Truncated::No if self.matches > self.q.keep => Truncated::Limit,
            other => other,
        })
    }

    /// Sends what is buffered; false once the client (or the main scan) has gone.
    pub(super) fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let data = std::mem::take(&mut self.out);
        self.out.reserve(OUT_BYTES + 4096);
        match &self.sink {
            Sink::Body(tx) => {
                let wait = self.q.deadline.min(STALLED_CLIENT);
                match self.rt.block_on(tx.send_within(Bytes::from(data), wait)) {
                    crate::http::body::Sent::Taken => true,
                    crate::http::body::Sent::Stalled => {
                        self.stalled = true;
                        false
                    }
                    crate::http::body::Sent::Gone => false,
                }
            }
            Sink::Part {
                tx,
                stop,
                ahead,
                index,
            } => {
                ahead.reserve(*index, data.len(), stop)
                    && tx
                        .send(Part::Out(data, std::mem::take(&mut self.match_ends)))
                        .is_ok()
            }
        }
    }
}
