//! Append-only segment files holding the line buckets; sled keeps only a small index
//! (bucket → location).
//!
//! Why not keep the buckets in sled: sled 0.34 keeps every value it reads or writes in
//! memory whatever `cache_capacity` says (measured: a 256 MiB scan with a 16 MiB cache ends
//! at 263 MiB RSS), so a 1 GB download grew the server by 1 GB. Buckets read with `pread`
//! from these files go through the kernel's page cache instead, and memory stays flat.
//!
//! A bucket is never changed in place: a merge appends the new version and the index moves
//! to it. Data always reaches the file before the index entry naming it is applied to sled;
//! at a commit the files are fsynced before sled is flushed, so a durable index entry never
//! names data that is not.
//!
//! Writers' small appends wait in a write buffer until the commit ([`Segments::sync`]) or
//! until it holds [`BUFFER_BYTES`]: under a fleet of agents sending a few dozen lines each,
//! one `write` per request was 7 % of the aggregator's CPU, and the data only has to be in the
//! file when the commit that acknowledges it fsyncs. Their index entries wait for the same
//! commit (in the store's pending map), so nothing outside the writers ever names a buffered
//! byte; writers merging into a bucket they just wrote read it from the buffer.
//!
//! Closed segments leave the kernel's page cache once [`CACHED_CLOSED_SEGMENTS`] newer ones
//! are durable ([`Segments::sync`]): what the store writes keeps recycling the same ~1.25 GiB of
//! cache instead of filling all of memory with data nobody may read again. Measured on this
//! project's VM: writing into never-used page cache cost 1.1–2.4 s of kernel CPU per GB (the
//! host backs each new page on first touch), into recycled pages 0.25 s; a 5.9 GB ingest spent
//! ~40 % of the aggregator's CPU copying into fresh pages. Reads of older data come from disk
//! through the page cache as usual (and stay cached by the kernel's own rules).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 256 << 20;
/// Closed, durable segments kept in the page cache (with the active one, ~1.25 GiB of the
/// newest data); older ones are dropped from it.
const CACHED_CLOSED_SEGMENTS: usize = 4;
/// Buffered appends are written out before the buffer would hold more than this; appends
/// this large or larger are written at once.
pub const BUFFER_BYTES: usize = 256 * 1024;

/// Where a bucket's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Loc {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
}

impl Loc {
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&self.segment.to_be_bytes());
        b[4..12].copy_from_slice(&self.offset.to_be_bytes());
        b[12..].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// The inverse of [`Loc::encode`] (index values hold one or more: see
    /// `sled_store::keys::IndexValue`).
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 16 {
            return None;
        }
        Some(Loc {
            segment: u32::from_be_bytes(b[..4].try_into().ok()?),
            offset: u64::from_be_bytes(b[4..12].try_into().ok()?),
            len: u32::from_be_bytes(b[12..16].try_into().ok()?),
        })
    }
}

/// The segment files of one store.
#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
    active: Mutex<Active>,
    /// Open read handles, by segment number.
    readers: Mutex<HashMap<u32, Arc<File>>>,
    /// Closed segments made durable, oldest first, still in the page cache (by number: a
    /// handle held here would keep a compacted segment's disk space).
    cached: Mutex<std::collections::VecDeque<u32>>,
    /// Bytes appended since the start, compaction's copies included: against the bytes
    /// received, the store's write amplification.
    pub appended: prometheus_client::metrics::counter::Counter,
    /// The segment compressed blocks are appended to, apart from the raw buckets: raw
    /// segments become all garbage once sealed and are deleted without copying anything,
    /// and block segments hold little garbage. `None` until the first block (and after it
    /// is closed).
    sealed: Mutex<Option<(u32, Arc<File>, u64)>>,
    /// The number the next new segment gets (both streams share the numbers).
    next: std::sync::atomic::AtomicU32,
}

#[derive(Debug)]
struct Active {
    number: u32,
    file: Arc<File>,
    /// Logical length: the file's bytes, then `buf`.
    len: u64,
    /// Appended, not yet written: the bytes at `len - buf.len()..len`.
    buf: Vec<u8>,
    /// Segments written since the last sync (closed ones included).
    unsynced: Vec<(u32, Arc<File>)>,
}

impl Active {
    /// Writes the buffered bytes to the file. On an error they stay buffered, to be written
    /// at the same offset by the next attempt.
    fn write_buffer(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let at = self.len - self.buf.len() as u64;
            self.file.write_all_at(&self.buf, at)?;
            self.buf.clear();
        }
        Ok(())
    }
}

fn path_of(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:08}.seg"))
}

/// Makes a file's creation or removal in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens (creating, never truncating) segment `n` for reading and appending.
fn open_segment(dir: &Path, n: u32) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path_of(dir, n))
}

impl Segments {
    /// Opens the directory, appending to its newest segment.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let newest = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".seg")?
                    .parse::<u32>()
                    .ok()
            })
            .max()
            .unwrap_or(1);
        let file = Arc::new(open_segment(dir, newest)?);
        let len = file.metadata()?.len();
        Ok(Segments {
            dir: dir.to_path_buf(),
            active: Mutex::new(Active {
                number: newest,
                file: file.clone(),
                len,
                buf: Vec::new(),
                unsynced: Vec::new(),
            }),
            readers: Mutex::new(HashMap::from([(newest, file)])),
            cached: Mutex::default(),
            appended: Default::default(),
            sealed: Mutex::default(),
            next: std::sync::atomic::AtomicU32::new(newest + 1),
        })
    }

    /// Appends a compressed block (or compaction's copy of blocks) to the block stream and
    /// fsyncs it, as [`append_durable`](Self::append_durable) does for raw buckets.
    pub fn append_sealed(&self, data: &[u8]) -> std::io::Result<(u32, u64)> {
        let (number, at, file) = {
            let mut s = self
                .sealed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if s.as_ref()
                .is_none_or(|(_, _, len)| *len > 0 && len + data.len() as u64 > SEGMENT_BYTES)
            {
                let number = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let file = Arc::new(open_segment(&self.dir, number)?);
                sync_dir(&self.dir)?;
                let len = file.metadata()?.len();
                self.readers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(number, file.clone());
                *s = Some((number, file, len));
            }
            let Some((number, file, len)) = s.as_mut() else {
                return Err(std::io::Error::other("no block segment"));
            };
            let at = *len;
            file.write_all_at(data, at)?;
            *len += data.len() as u64;
            self.appended.inc_by(data.len() as u64);
            (*number, at, file.clone())
        };
        file.sync_data()?;
        Ok((number, at))
    }

    /// Whether `number` is the block stream's open segment.
    fn is_sealed_active(&self, number: u32) -> bool {
        self.sealed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .is_some_and(|(n, _, _)| *n == number)
    }

    /// Appends `data` (one or more buckets back to back) and writes it to the file now;
    /// returns where it starts and the file. Made durable by the next commit's [`sync`](Self::sync).
    fn append(&self, data: &[u8]) -> std::io::Result<(u32, u64, Arc<File>)> {
        let mut a = self.lock_active();
        a.write_buffer()?;
        if a.len > 0 && a.len + data.len() as u64 > SEGMENT_BYTES {
            self.start_next(&mut a)?;
        }
        let at = a.len;
        a.file.write_all_at(data, at)?;
        a.len += data.len() as u64;
        self.appended.inc_by(data.len() as u64);
        Ok((a.number, at, a.file.clone()))
    }

    /// Appends `data` and fsyncs it before returning where it starts: for appends whose
    /// location goes straight into sled (compaction's copies). sled writes its log whenever
    /// a buffer fills, so an entry naming these bytes can reach the disk before any commit;
    /// the bytes must be there first. The fsync runs without the segment lock held.
    pub fn append_durable(&self, data: &[u8]) -> std::io::Result<(u32, u64)> {
        let (number, at, file) = self.append(data)?;
        file.sync_data()?;
        Ok((number, at))
    }

    /// Appends `data` for a writer whose index entries wait for the next commit, which writes
    /// it out (if the buffer has not already) before it fsyncs; returns where it starts.
    pub fn append_buffered(&self, data: &[u8]) -> std::io::Result<(u32, u64)> {
        if data.len() >= BUFFER_BYTES {
            return self.append(data).map(|(number, at, _)| (number, at));
        }
        let mut a = self.lock_active();
        // Room first: if the write fails (a full disk), nothing is added, so the buffer
        // never holds more than BUFFER_BYTES however long the disk stays full.
        if a.buf.len() + data.len() > BUFFER_BYTES {
            a.write_buffer()?;
        }
        if a.len > 0 && a.len + data.len() as u64 > SEGMENT_BYTES {
            self.start_next(&mut a)?;
        }
        let at = a.len;
        a.buf.extend_from_slice(data);
        a.len += data.len() as u64;
        self.appended.inc_by(data.len() as u64);
        Ok((a.number, at))
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, Active> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the active segment and starts the next one.
    fn start_next(&self, a: &mut Active) -> std::io::Result<()> {
        a.write_buffer()?;
        let number = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let file = Arc::new(open_segment(&self.dir, number)?);
        // The new file's name must survive a power cut as its data will.
        sync_dir(&self.dir)?;
        let old = std::mem::replace(&mut a.file, file.clone());
        a.unsynced.push((a.number, old));
        a.number = number;
        a.len = file.metadata()?.len();
        self.readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(number, file);
        Ok(())
    }

    /// Closes the active segment if it is `number`, so it can be compacted; new appends go to
    /// the next one.
    pub fn close_if_active(&self, number: u32) -> std::io::Result<()> {
        let mut a = self.lock_active();
        if a.number == number {
            self.start_next(&mut a)?;
        }
        drop(a);
        let mut s = self
            .sealed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.as_ref().is_some_and(|(n, _, _)| *n == number) {
            // Every block in it was fsynced when appended.
            *s = None;
        }
        Ok(())
    }

    /// Every segment and its length in bytes, the active one included.
    pub fn sizes(&self) -> std::io::Result<Vec<(u32, u64)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let number = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(number) = number {
                out.push((number, e.metadata()?.len()));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Deletes a closed segment that nothing refers to any more; its disk space returns once
    /// a read in progress lets go of the file.
    pub fn remove(&self, number: u32) -> std::io::Result<()> {
        if self.lock_active().number == number || self.is_sealed_active(number) {
            return Err(std::io::Error::other(
                "the active segment cannot be removed",
            ));
        }
        self.readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&number);
        std::fs::remove_file(path_of(&self.dir, number))?;
        sync_dir(&self.dir)
    }

    /// Reads a bucket (from the write buffer if it is still there).
    pub fn read(&self, loc: Loc) -> std::io::Result<Vec<u8>> {
        {
            let a = self.lock_active();
            let buffered_from = a.len - a.buf.len() as u64;
            if loc.segment == a.number && loc.offset >= buffered_from {
                let start = (loc.offset - buffered_from) as usize;
                return a
                    .buf
                    .get(start..start + loc.len as usize)
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| std::io::Error::other("bucket past the segment's end"));
            }
        }
        let file = self.handle(loc.segment)?;
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset)?;
        Ok(buf)
    }

    /// Reads `len` bytes at `offset` of `segment` into `buf` (cleared first): many adjacent
    /// buckets in one call, for a search's sequential scan.
    pub fn read_range_into(
        &self,
        segment: u32,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let file = self.handle(segment)?;
        // Only bytes never used before are zeroed: a reused buffer is just cut to size.
        if buf.len() < len {
            buf.resize(len, 0);
        } else {
            buf.truncate(len);
        }
        file.read_exact_at(buf, offset)
    }

    /// A cursor over a bucket, for readers that must not hold it whole (downloads).
    pub fn cursor(&self, loc: Loc) -> std::io::Result<Cursor> {
        Ok(Cursor {
            file: self.handle(loc.segment)?,
            pos: loc.offset,
            end: loc.offset + u64::from(loc.len),
            buf: Vec::new(),
            at: 0,
        })
    }

    /// The open read handle of a segment (a deleted segment stays readable through a handle
    /// opened before the deletion).
    fn handle(&self, segment: u32) -> std::io::Result<Arc<File>> {
        let mut r = self
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(match r.get(&segment) {
            Some(f) => f.clone(),
            None => {
                let f = Arc::new(File::open(path_of(&self.dir, segment))?);
                r.insert(segment, f.clone());
                f
            }
        })
    }
}

/// Reads one stored bucket front to back through a 64 KiB buffer, skipping content it does
/// not need without reading it: a download holds at most its own chunk, never a whole
/// bucket (which a file of 128 lines of 1 MiB makes 128 MiB).
#[derive(Debug)]
pub struct Cursor {
    file: Arc<File>,
    /// File offset of the first byte not yet in `buf`.
    pos: u64,
    /// File offset just past the bucket.
    end: u64,
    buf: Vec<u8>,
    /// Next unread byte of `buf`.
    at: usize,
}

impl crate::bucket::ByteSource for Cursor {
    fn byte(&mut self) -> std::io::Result<Option<u8>> {
        Cursor::byte(self)
    }
    fn buffered(&mut self) -> std::io::Result<&[u8]> {
        Cursor::buffered(self)
    }
    fn consume(&mut self, n: usize) {
        Cursor::consume(self, n);
    }
}

const CURSOR_BUFFER: u64 = 64 * 1024;

impl Cursor {
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.at < self.buf.len() {
            return Ok(true);
        }
        let n = (self.end - self.pos).min(CURSOR_BUFFER) as usize;
        if n == 0 {
            return Ok(false);
        }
        self.buf.resize(n, 0);
        self.file.read_exact_at(&mut self.buf, self.pos)?;
        self.pos += n as u64;
        self.at = 0;
        Ok(true)
    }

    /// The next byte, or `None` at the end of the bucket.
    pub fn byte(&mut self) -> std::io::Result<Option<u8>> {
        if !self.fill()? {
            return Ok(None);
        }
        self.at += 1;
        Ok(Some(self.buf[self.at - 1]))
    }

    /// The whole bucket, when it fits the buffer (one read): the fast path for readers.
    pub fn whole(&mut self) -> std::io::Result<Option<&[u8]>> {
        if self.end - self.pos > CURSOR_BUFFER || self.at != 0 {
            return Ok(None);
        }
        self.fill()?;
        Ok(Some(&self.buf[..]))
    }

    /// The buffered bytes not read yet (filling the buffer if it is empty).
    pub fn buffered(&mut self) -> std::io::Result<&[u8]> {
        self.fill()?;
        Ok(&self.buf[self.at..])
    }

    /// Consumes `n` buffered bytes (at most what [`buffered`](Self::buffered) returned).
    pub fn consume(&mut self, n: usize) {
        self.at = (self.at + n).min(self.buf.len());
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.at) as u64 + (self.end - self.pos)
    }

    fn short() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "bucket ends inside a line")
    }

    /// Appends the next `len` bytes to `out`.
    pub fn read_into(&mut self, out: &mut Vec<u8>, len: u64) -> std::io::Result<()> {
        if len > self.remaining() {
            return Err(Self::short());
        }
        let mut left = len as usize;
        while left > 0 {
            self.fill()?;
            let take = left.min(self.buf.len() - self.at);
            out.extend_from_slice(&self.buf[self.at..self.at + take]);
            self.at += take;
            left -= take;
        }
        Ok(())
    }

    /// Skips the next `len` bytes without reading what lies past the buffer.
    pub fn skip(&mut self, len: u64) -> std::io::Result<()> {
        if len > self.remaining() {
            return Err(Self::short());
        }
        let in_buf = (self.buf.len() - self.at) as u64;
        if len <= in_buf {
            self.at += len as usize;
        } else {
            self.pos += len - in_buf;
            self.at = self.buf.len();
        }
        Ok(())
    }
}

impl Segments {
    /// Whether the active segment is still there and its directory writable.
    pub fn check(&self) -> std::io::Result<()> {
        let (number, file) = {
            let a = self.lock_active();
            (a.number, a.file.clone())
        };
        file.metadata()?;
        std::fs::metadata(path_of(&self.dir, number))?;
        if std::fs::metadata(&self.dir)?.permissions().readonly() {
            return Err(std::io::Error::other("segment directory is read-only"));
        }
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> std::io::Result<()> {
        let (current, closed) = {
            let mut a = self.lock_active();
            a.write_buffer()?;
            (a.file.clone(), std::mem::take(&mut a.unsynced))
        };
        for (_, f) in &closed {
            f.sync_data()?;
        }
        current.sync_data()?;
        if !closed.is_empty() {
            self.leave_page_cache(closed.into_iter().map(|(n, _)| n));
        }
        Ok(())
    }

    /// Drops the oldest durable closed segments from the page cache, keeping the newest
    /// [`CACHED_CLOSED_SEGMENTS`]. Only advice: a failure costs memory, not data. The advice
    /// itself runs on a thread of its own (once per 256 MiB written): dropping a segment's
    /// pages took ~18 ms here, which would hold up every ack of the commit calling this.
    fn leave_page_cache(&self, durable: impl IntoIterator<Item = u32>) {
        let leaving: Vec<Arc<File>> = {
            let mut cached = self
                .cached
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            cached.extend(durable);
            let excess = cached.len().saturating_sub(CACHED_CLOSED_SEGMENTS);
            let readers = self
                .readers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // A segment compacted away meanwhile has no handle left and nothing to drop.
            cached
                .drain(..excess)
                .filter_map(|n| readers.get(&n).cloned())
                .collect()
        };
        if leaving.is_empty() {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("segment-uncache".into())
            .spawn(move || {
                for f in leaving {
                    if let Err(e) = logship_common::drop_cached_pages(&f) {
                        tracing::debug!(error = %e, "could not drop a segment from the page cache");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "could not start dropping segments from the page cache");
        }
    }

    /// Bytes on disk.
    pub fn size(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_durable_closed_segments_stay_in_the_page_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Segments::open(dir.path()).expect("open");
        let mut closed = Vec::new();
        for i in 0..7u8 {
            let (n, _) = s.append_buffered(&[i; 100]).expect("append");
            s.close_if_active(n).expect("close");
            closed.push(n);
            // Closed but not yet durable: nothing may leave the cache before its fsync.
            assert!(!s.cached.lock().expect("lock").contains(&n));
            s.sync().expect("sync");
        }
        // One compacted away: leaving the cache later must not need (or keep) its file.
        s.remove(closed[2]).expect("remove");
        let (n, _) = s.append_buffered(b"last").expect("append");
        s.close_if_active(n).expect("close");
        closed.push(n);
        s.sync().expect("sync");
        let kept: Vec<u32> = s.cached.lock().expect("lock").iter().copied().collect();
        assert_eq!(kept, closed[closed.len() - CACHED_CLOSED_SEGMENTS..]);
        // Dropping pages changes no byte.
        for (i, &n) in closed.iter().enumerate() {
            if n == closed[2] {
                continue;
            }
            let want: &[u8] = if i == 7 { b"last" } else { &[i as u8; 100] };
            let loc = Loc {
                segment: n,
                offset: 0,
                len: want.len() as u32,
            };
            assert_eq!(s.read(loc).expect("read"), want, "segment {n}");
        }
    }

    #[test]
    fn buffered_appends_read_back_before_and_after_they_are_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Segments::open(dir.path()).expect("open");
        let (seg, a) = s.append_buffered(b"hello").expect("append");
        let (_, b) = s.append_buffered(b"world!").expect("append");
        let at = |offset, len| Loc {
            segment: seg,
            offset,
            len,
        };
        assert_eq!(
            std::fs::metadata(path_of(dir.path(), seg))
                .expect("stat")
                .len(),
            0,
            "small appends wait for the commit"
        );
        assert_eq!(s.read(at(b, 6)).expect("read buffered"), b"world!");
        // A write-through append (compaction) goes after the buffered bytes, not over them.
        let (_, c) = s.append_durable(b"copied").expect("append through");
        assert_eq!(c, 11);
        let (_, d) = s.append_buffered(b"tail").expect("append");
        // Closing the segment writes its buffer first.
        s.close_if_active(seg).expect("close");
        let (next, e) = s
            .append_buffered(b"next")
            .expect("append to the next segment");
        assert_eq!((next, e), (seg + 1, 0));
        s.sync().expect("sync");
        drop(s);
        let s = Segments::open(dir.path()).expect("reopen");
        for (loc, want) in [
            (at(a, 5), &b"hello"[..]),
            (at(b, 6), b"world!"),
            (at(c, 6), b"copied"),
            (at(d, 4), b"tail"),
        ] {
            assert_eq!(s.read(loc).expect("read"), want);
        }
        let l = Loc {
            segment: next,
            offset: 0,
            len: 4,
        };
        assert_eq!(s.read(l).expect("read"), b"next");
    }

    #[test]
    fn a_large_append_is_written_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Segments::open(dir.path()).expect("open");
        s.append_buffered(b"small").expect("append");
        let big = vec![7u8; BUFFER_BYTES];
        let (seg, at) = s.append_buffered(&big).expect("append");
        assert_eq!(at, 5);
        let len = std::fs::metadata(path_of(dir.path(), seg))
            .expect("stat")
            .len();
        assert_eq!(len, 5 + BUFFER_BYTES as u64, "both are in the file");
    }

    #[test]
    fn appends_read_back_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Segments::open(dir.path()).expect("open");
        let (seg, a) = s.append_durable(b"hello").expect("append");
        let (_, b) = s.append_durable(b"world!").expect("append");
        s.sync().expect("sync");
        let la = Loc {
            segment: seg,
            offset: a,
            len: 5,
        };
        let lb = Loc {
            segment: seg,
            offset: b,
            len: 6,
        };
        assert_eq!(Loc::decode(&la.encode()), Some(la));
        drop(s);
        let s = Segments::open(dir.path()).expect("reopen");
        assert_eq!(s.read(la).expect("read"), b"hello");
        assert_eq!(s.read(lb).expect("read"), b"world!");
        let (_, c) = s.append_durable(b"more").expect("append after reopen");
        assert_eq!(c, 11, "appends continue at the end");
    }

    #[test]
    fn a_closed_segment_can_be_removed_and_the_active_one_cannot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Segments::open(dir.path()).expect("open");
        let (first, _) = s.append_durable(b"old").expect("append");
        assert!(s.remove(first).is_err(), "active");
        s.close_if_active(first).expect("close");
        let (second, at) = s.append_durable(b"new").expect("append");
        assert_eq!((second, at), (first + 1, 0));
        assert_eq!(s.sizes().expect("sizes"), vec![(first, 3), (second, 3)]);
        s.remove(first).expect("remove");
        assert_eq!(s.sizes().expect("sizes"), vec![(second, 3)]);
        let gone = Loc {
            segment: first,
            offset: 0,
            len: 3,
        };
        assert_eq!(
            s.read(gone).map_err(|e| e.kind()).err(),
            Some(std::io::ErrorKind::NotFound)
        );
    }
}
