//! Writes: a file batch in pieces of at most a script's buckets and bytes, each one script
//! on the generation's slot (pipelined with its `WAIT`).

use super::*;

/// One bucket's new entries as the write script takes them.
pub(super) struct Piece {
    bucket: u64,
    count: usize,
    /// The entries' earliest and latest time (ms).
    span: (u64, u64),
    blob: Vec<u8>,
}

/// How a write of one piece ended.
pub(super) enum PieceError {
    /// The generation was dropped by retention: start a new one.
    Gone,
    Store(StoreError),
}

impl Inner {
    /// Writes one file's lines; retried in a new generation if retention dropped the old
    /// one in between.
    pub(super) async fn write_file(&self, fb: &FileBatch<'_>) -> Result<WriteStats, StoreError> {
        let mut stats = WriteStats::default();
        if fb.lines.is_empty() {
            return Ok(stats);
        }
        // Every line of the batch is stamped with when it was received.
        let grouped = bucket::group(&fb.lines, crate::clock::now_ms());
        stats.lines = grouped.lines;
        stats.bytes = grouped.bytes;
        let max_line = grouped.max_line;
        let mut pieces: Vec<Vec<Piece>> = vec![Vec::new()];
        let mut piece_bytes = 0;
        for (b, entries) in grouped.buckets {
            let blob = keys::encode_entries(&entries);
            let last = pieces
                .last_mut()
                .filter(|p| p.len() < SCRIPT_BUCKETS && piece_bytes + blob.len() <= SCRIPT_BYTES);
            let piece = match last {
                Some(p) => p,
                None => {
                    piece_bytes = 0;
                    pieces.push(Vec::new());
                    pieces.last_mut().expect("just pushed")
                }
            };
            piece_bytes += blob.len();
            piece.push(Piece {
                bucket: b,
                count: entries.len(),
                span: bucket::time_span(&entries),
                blob,
            });
        }
        for attempt in 0..5u32 {
            let id = self.resolve(&fb.host, &fb.file, &fb.generation).await?;
            let results = futures_util::future::join_all(
                pieces
                    .iter()
                    .filter(|p| !p.is_empty())
                    .map(|p| self.write_piece(id, &fb.host, &fb.file, max_line, p)),
            )
            .await;
            let mut added = 0;
            let mut gone = false;
            for r in results {
                match r {
                    Ok(n) => added += n,
                    Err(PieceError::Gone) => gone = true,
                    Err(PieceError::Store(e)) => return Err(e),
                }
            }
            if !gone {
                stats.new_lines = added;
                self.touch(id, &fb.host, &fb.file, &fb.generation).await;
                return Ok(stats);
            }
            // Retention marked the generation dropped: finish unlisting it (the sweep would),
            // so the next resolve creates a fresh one.
            self.cache().remove(&(
                fb.host.to_string(),
                fb.file.to_string(),
                fb.generation.to_string(),
            ));
            let _ = self.unindex(id, &fb.host, &fb.file, &fb.generation).await;
            tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt + 1))).await;
        }
        Err(StoreError::unavailable(
            "generation keeps being dropped by retention while written; retry",
        ))
    }

    /// One write script (and `WAIT`, in the same pipeline so it follows the write on the
    /// same connection to the same primary).
    pub(super) async fn write_piece(
        &self,
        id: u64,
        host: &str,
        file: &str,
        max_line: u64,
        piece: &[Piece],
    ) -> Result<u64, PieceError> {
        let k = &self.keys;
        // EVALSHA first (the script is sent once per node), EVAL when a node lacks it.
        let build = |by_body: bool| {
            let mut c = if by_body {
                let mut c = redis::cmd("EVAL");
                c.arg(scripts::WRITE);
                c
            } else {
                let mut c = redis::cmd("EVALSHA");
                c.arg(self.write.get_hash());
                c
            };
            c.arg(piece.len() + 1).arg(k.meta(id));
            for p in piece {
                c.arg(k.bucket(id, p.bucket));
            }
            c.arg(now_ms())
                .arg(max_line.to_string())
                .arg(k.channel())
                .arg(keys::written_message(host, file));
            for p in piece {
                c.arg(p.count).arg(&p.blob[..]).arg(p.span.0).arg(p.span.1);
            }
            c
        };
        let wait = self.opts().wait_replicas;
        let wait_ms = self.opts().wait_timeout.as_millis() as u64;
        let run = |mut c: Conn, by_body: bool| {
            let mut pipe = redis::pipe();
            pipe.add_command(build(by_body));
            if wait > 0 {
                pipe.cmd("WAIT").arg(wait).arg(wait_ms);
            }
            async move { pipe.query_async::<Vec<Value>>(&mut c).await }
        };
        let mut result = self.call("writing lines", |c| run(c, false)).await;
        if result.as_ref().is_err_and(|e| answered(e, "NOSCRIPT")) {
            // A node that has not seen the script yet (new, or just promoted).
            result = self.call("writing lines", |c| run(c, true)).await;
        }
        let values = match result {
            Ok(v) => v,
            Err(e) if answered(&e, "NOGEN") => return Err(PieceError::Gone),
            Err(e) => return Err(PieceError::Store(e)),
        };
        let added = match values.first() {
            Some(Value::Int(n)) => *n as u64,
            other => {
                return Err(PieceError::Store(StoreError::unavailable(format!(
                    "redis: unexpected write answer {other:?}"
                ))))
            }
        };
        if wait > 0 {
            let got = match values.get(1) {
                Some(Value::Int(n)) => *n,
                _ => 0,
            };
            if got < i64::from(wait) {
                return Err(PieceError::Store(StoreError::unavailable(format!(
                    "redis: the write reached {got} of the {wait} replicas required \
                     (store.wait_replicas) within {wait_ms} ms; not acknowledged"
                ))));
            }
        }
        Ok(added)
    }

    /// Refreshes a written generation's retention score, at most once a second per process.
    pub(super) async fn touch(&self, id: u64, host: &str, file: &str, name: &str) {
        let key = (host.to_owned(), file.to_owned(), name.to_owned());
        let due = match self.cache().get_mut(&key) {
            Some((_, at)) if at.elapsed() >= TOUCH_EVERY => {
                *at = Instant::now();
                true
            }
            _ => false,
        };
        if due {
            // The score is only a hint: the drop re-checks the generation's own last write.
            let _ = self.score(id, now_ms(), true).await;
        }
    }
}

/// Whether the server answered the error `code` (`NOSCRIPT`, or our script's `NOGEN`). The
/// Redis error is read from the cause the store error keeps; its text is the fallback, as an
/// error inside a pipeline's answer may come back wrapped with the code in its message.
fn answered(e: &StoreError, code: &str) -> bool {
    e.cause::<redis::RedisError>()
        .is_some_and(|r| r.code() == Some(code))
        || e.detail().to_ascii_uppercase().contains(code)
}
