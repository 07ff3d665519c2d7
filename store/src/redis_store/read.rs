//! Reads: a generation's lines a chunk at a time, buckets fetched by number with `MGET`, a
//! big bucket through byte ranges.

use super::*;

impl Inner {
    pub(super) async fn read_chunk(&self, id: u64, mut read: Read) -> Result<Chunk, StoreError> {
        let (from, max_bytes) = (read.from, read.max_bytes);
        let mut chunk = Chunk {
            end: from,
            ..Chunk::default()
        };
        let max_line: Option<String> = self
            .cmd(
                "reading a generation",
                redis::cmd("HGET")
                    .arg(self.keys.meta(id))
                    .arg("max_line")
                    .clone(),
            )
            .await?;
        let Some(max_line) = max_line.and_then(|m| m.parse::<u64>().ok()) else {
            return Ok(chunk);
        };
        read.to = read.to.min(max_line);
        if from > read.to {
            return Ok(chunk);
        }
        let range = buckets_of(from, read.to);
        let (mut b, last) = (*range.start(), *range.end());
        // A few buckets per round trip at first, more while they keep coming back small.
        let mut group = 2u64;
        while b <= last {
            let n = group.min(last - b + 1);
            // Sizes first, so a big bucket is never fetched whole and a group stays small.
            let mut pipe = redis::pipe();
            for x in b..b + n {
                pipe.cmd("STRLEN").arg(self.keys.bucket(id, x));
            }
            let sizes: Vec<u64> = self
                .call("reading lines", |mut c| async move {
                    pipe.query_async(&mut c).await
                })
                .await?;
            let (mut take, mut total) = (0u64, 0u64);
            for &size in &sizes {
                if take > 0 && (size > BIG_BUCKET || total + size > GROUP_BYTES) {
                    break;
                }
                take += 1;
                total += size;
            }
            let take = take.max(1);
            if sizes.first().is_some_and(|&s| s > BIG_BUCKET) {
                let key = self.keys.bucket(id, b);
                if self
                    .read_big_bucket(&key, sizes[0], b * LINES_PER_BUCKET, &read, &mut chunk)
                    .await?
                {
                    return Ok(chunk);
                }
            } else {
                let mut mget = redis::cmd("MGET");
                for x in b..b + take {
                    mget.arg(self.keys.bucket(id, x));
                }
                let values: Vec<Option<Vec<u8>>> = self.cmd("reading lines", mget).await?;
                for (i, v) in values.iter().enumerate() {
                    let base = (b + i as u64) * LINES_PER_BUCKET;
                    let Some(v) = v else { continue };
                    let what = format!("bucket at line {base} of generation {id}");
                    let bucket = keys::decode_bucket(v, &what)?;
                    if read.outside(bucket.first_ms, bucket.last_ms) {
                        chunk.skipped += 1;
                        continue;
                    }
                    if chunk.push_bucket(base, &bucket.entries, &read) {
                        return Ok(chunk);
                    }
                }
            }
            b += take;
            let avg = (chunk.data.len() as u64 / (b - range.start()).max(1)).max(1);
            let room = (max_bytes.saturating_sub(chunk.data.len()) as u64 / avg).max(1);
            group = (group * 2).min(32).min(room);
        }
        Ok(chunk)
    }

    /// Reads a bucket too big to fetch whole through `GETRANGE` windows of [`BIG_BUCKET`]
    /// bytes, so a download or search holds at most a window and one line of it. Returns
    /// whether the chunk is complete.
    pub(super) async fn read_big_bucket(
        &self,
        key: &str,
        size: u64,
        base: u64,
        read: &Read,
        chunk: &mut Chunk,
    ) -> Result<bool, StoreError> {
        let mut r = RangeReader {
            key,
            size,
            pos: 0,
            buf: Vec::new(),
            at: 0,
        };
        let mut head = Vec::new();
        r.read_into(self, &mut head, keys::HEADER as u64).await?;
        let (first_ms, last_ms) = keys::header_times(&head)
            .ok_or_else(|| StoreError::corrupt(format!("{key}: bad bucket header")))?;
        if read.outside(first_ms, last_ms) {
            chunk.skipped += 1;
            return Ok(false);
        }
        let mut order = crate::bucket::Order::default();
        while r.remaining() > 0 {
            // The header parsed as the sled backend parses it (bounded varints, offsets in
            // order): a corrupt bucket is a corruption error, not misnumbered lines.
            let buffered = r.buffered(self, crate::bucket::MAX_HEADER).await?;
            let (h, used) = crate::bucket::parse_header(buffered)
                .map_err(|e| StoreError::corrupt_by(key, e))?;
            order
                .check(h.offset)
                .map_err(|e| StoreError::corrupt_by(key, e))?;
            r.at += used;
            let (len, partial) = (h.len, h.partial);
            let n = base + u64::from(h.offset);
            if n < read.from || n > read.to {
                r.skip(len);
                continue;
            }
            if !chunk.admit(n, partial, h.ts, read.contiguous, read.numbered) {
                return Ok(true);
            }
            r.read_into(self, &mut chunk.data, len).await?;
            if chunk.close_line(n, partial, read.max_bytes, read.to) {
                return Ok(true);
            }
        }
        Ok(read.full_after(chunk, base))
    }
}

/// A bucket larger than this is read in windows of this size, never whole.
const BIG_BUCKET: u64 = 1 << 20;
/// Bucket bytes fetched per `MGET`, at most.
const GROUP_BYTES: u64 = 4 << 20;

/// Reads one string value piecewise with `GETRANGE`.
struct RangeReader<'a> {
    key: &'a str,
    size: u64,
    /// Value offset of `buf[0]`'s successor window: where the next fetch starts.
    pos: u64,
    buf: Vec<u8>,
    /// Next unread byte in `buf`.
    at: usize,
}

impl RangeReader<'_> {
    fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.pos) + (self.buf.len() - self.at) as u64
    }

    async fn fill(&mut self, inner: &Inner) -> Result<(), StoreError> {
        if self.pos >= self.size {
            return Err(StoreError::corrupt(format!(
                "{}: bucket ends inside an entry",
                self.key
            )));
        }
        let end = (self.pos + BIG_BUCKET).min(self.size) - 1;
        let mut c = redis::cmd("GETRANGE");
        c.arg(self.key).arg(self.pos).arg(end);
        self.buf = inner.cmd("reading lines", c).await?;
        if self.buf.is_empty() {
            return Err(StoreError::unavailable(format!(
                "{}: bucket changed while read",
                self.key
            )));
        }
        self.pos += self.buf.len() as u64;
        self.at = 0;
        Ok(())
    }

    /// The unread bytes, at least `n` of them unless the value ends first.
    async fn buffered(&mut self, inner: &Inner, n: usize) -> Result<&[u8], StoreError> {
        if self.buf.len() - self.at < n && self.pos < self.size {
            let unread = self.buf.split_off(self.at);
            self.fill(inner).await?;
            let fetched = std::mem::replace(&mut self.buf, unread);
            self.buf.extend_from_slice(&fetched);
        }
        Ok(&self.buf[self.at..])
    }

    async fn read_into(
        &mut self,
        inner: &Inner,
        out: &mut Vec<u8>,
        mut len: u64,
    ) -> Result<(), StoreError> {
        while len > 0 {
            if self.at == self.buf.len() {
                self.fill(inner).await?;
            }
            let take = (self.buf.len() - self.at).min(len as usize);
            out.extend_from_slice(&self.buf[self.at..self.at + take]);
            self.at += take;
            len -= take as u64;
        }
        Ok(())
    }

    fn skip(&mut self, len: u64) {
        let in_buf = ((self.buf.len() - self.at) as u64).min(len);
        self.at += in_buf as usize;
        self.pos += len - in_buf;
    }
}
