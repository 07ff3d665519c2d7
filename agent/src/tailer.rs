//! The tailer: one file identity's reader, a small state machine.
//!
//! It reads from its checkpoint (or the start or end), splits complete lines, numbers them
//! exactly (0-based, counting from the file's start even when it starts at the end), and
//! hands them to the batcher in chunks through a bounded channel — awaiting that send is the
//! back-pressure that parks it when the aggregator is slow or down.
//!
//! Lifecycle events it handles itself: growth (woken by notify or the poll), truncation
//! (size below the read position: a new generation from offset 0), a partial last line
//! (held until `\n` or `partial_line_timeout`), over-long lines (truncated, never split),
//! idle descriptors (closed, reopened by identity), and rotation (told by discovery: drain
//! the old file, wait `rotate_wait` for late writes, finish).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::batcher::{Batcher, Chunk};
use crate::checkpoint::{Checkpoint, FileId};
use crate::config::{PipelineOptions, ReadFrom};
use crate::generation;
use crate::metrics::Metrics;
use crate::open_file::{open_identity, open_regular, regular_siblings};

/// A chunk goes to the batcher at this size. Small, because a tailer holds its chunk while
/// its batcher waits for budget: with a thousand active files, 64 KiB chunks were 55 MB.
const CHUNK_BYTES: usize = 16 * 1024;
/// Budget reserved before reading into a chunk: a chunk closes past `CHUNK_BYTES`, at most
/// one read (16 KiB) later.
const RESERVE_BYTES: usize = 2 * CHUNK_BYTES;
/// A wait for the batcher or the budget this long may have let the file be truncated and
/// rewritten unseen: its first line is checked before reading on. (Every turn begins with
/// that check too.)
const RECHECK_AFTER_WAIT: Duration = Duration::from_millis(10);
/// Bytes of the end of what was read that a truncated generation's copy must match.
const TAIL_BYTES: usize = 64;
/// Bytes read per turn before yielding, so one busy file cannot starve the others.
const MAX_READ_PER_TURN: usize = 4 * 1024 * 1024;

/// Where a tailer starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// Resume an acknowledged position.
    Checkpoint(Checkpoint),
    /// No checkpoint: the source's `read_from`.
    Fresh(ReadFrom),
}

/// Signals from discovery and the agent to one tailer.
#[derive(Debug, Default)]
pub struct Control {
    /// Something changed (notify event or poll saw growth).
    pub wake: Notify,
    /// The path no longer leads to this file (renamed away or deleted): drain and finish.
    pub rotated: AtomicBool,
    /// Set by the tailer when it finished the file (drained after rotation).
    pub finished: AtomicBool,
    /// A reload no longer ships this file as it was (removed from the config, or its options
    /// changed): read to the end of what is complete, finish, keep the checkpoint.
    pub unwatched: AtomicBool,
    /// Set when the whole pipeline has ended.
    pub exited: AtomicBool,
}

/// Shared limits and signals a tailer needs.
#[derive(Debug, Clone)]
pub struct TailerEnv {
    pub options: Arc<PipelineOptions>,
    pub metrics: Arc<Metrics>,
    /// Descriptor budget across all tailers.
    pub open_files: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
}

/// One file's reader.
#[derive(Debug)]
pub struct Tailer {
    /// Where the file was found; reopened by identity from its directory after a rename.
    path: PathBuf,
    /// Stored file name.
    name: String,
    id: FileId,
    /// The size last reported to the lag metrics: only a change is reported (a read of a
    /// large file takes thousands of turns at one size).
    reported_size: Option<u64>,
    file: Option<(File, OwnedSemaphorePermit)>,
    generation: Option<Arc<str>>,
    /// The generation before a truncation, until the new one is named: a new life that
    /// begins with the same line must not be given its id (`generation::after_truncation`).
    previous: Option<Arc<str>>,
    /// Reading a truncated generation's copy (`drain_copy`): another inode, born later, which
    /// only the first line ties to the generation.
    reading_copy: bool,
    /// The last bytes read before `read_pos` (up to [`TAIL_BYTES`]; none yet after a start
    /// from a checkpoint): a truncated generation's copy must hold them there too.
    tail: Vec<u8>,
    /// Offset of the next byte to read.
    read_pos: u64,
    /// Offset where the current (incomplete) line starts.
    line_start: u64,
    /// Number of the current line.
    line: u64,
    /// Bytes of the current line read so far (at most `max_line_bytes`).
    pending: Vec<u8>,
    /// The current line exceeded `max_line_bytes`; the rest is being skipped.
    overflow: bool,
    /// Length of `pending` when it was last shipped as a partial line.
    partial_sent: Option<usize>,
    /// When the current partial line last grew.
    pending_since: Instant,
    /// When data was last read.
    last_data: Instant,
    /// Since when the file has had data but no complete first line (no generation yet).
    unnamed_since: Option<Instant>,
    env: TailerEnv,
    ctl: Arc<Control>,
}

/// Why a tailer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Rotated away or deleted, and drained: the file is done.
    Finished,
    /// The agent is stopping.
    Shutdown,
    /// The batcher is gone.
    Closed,
}

impl Tailer {
    /// Prepares a tailer for `file` (already open, identity `id`) at `start`.
    pub fn new(
        path: PathBuf,
        name: String,
        file: File,
        permit: OwnedSemaphorePermit,
        id: FileId,
        start: Start,
        env: TailerEnv,
        ctl: Arc<Control>,
    ) -> std::io::Result<Self> {
        let now = Instant::now();
        let mut t = Tailer {
            path,
            name,
            id,
            file: None,
            generation: None,
            previous: None,
            reading_copy: false,
            tail: Vec::new(),
            read_pos: 0,
            line_start: 0,
            line: 0,
            pending: Vec::new(),
            overflow: false,
            partial_sent: None,
            pending_since: now,
            last_data: now,
            unnamed_since: None,
            reported_size: None,
            env,
            ctl,
        };
        let generation = generation::derive(&file, id, false)?;
        match start {
            Start::Checkpoint(cp) if generation::belongs(&file, id, &cp.generation) => {
                t.read_pos = cp.offset;
                t.line_start = cp.offset;
                t.line = cp.line;
                t.generation = Some(Arc::from(cp.generation.as_str()));
            }
            Start::Checkpoint(cp)
                if cp.offset > 0
                    && file
                        .metadata()
                        .is_ok_and(|m| generation::born_as_named(&m, &cp.generation)) =>
            {
                // The same file (same inode, same birth), truncated while the agent was
                // stopped. Resume the old generation where it stood: the first read sees the
                // file no longer starts as it did, finishes that generation from a
                // copytruncate copy beside it if there is one (lines written before the
                // truncation are only there), then starts the new generation from 0 — what a
                // running tailer does. Another file on a reused inode (another birth, or none
                // recorded) is read from the start: a copy found for it could be an older
                // rotation that begins with the same header.
                tracing::info!(file = %t.name, old = %cp.generation, "checkpoint belongs to another generation; finishing it from a copy if there is one, then reading from the start");
                t.read_pos = cp.offset;
                t.line_start = cp.offset;
                t.line = cp.line;
                t.generation = Some(Arc::from(cp.generation.as_str()));
            }
            Start::Checkpoint(_) => t.generation = generation.map(Arc::from),
            Start::Fresh(ReadFrom::Beginning) => t.generation = generation.map(Arc::from),
            Start::Fresh(ReadFrom::End) => {
                t.generation = generation.map(Arc::from);
                t.skip_to_end(&file)?;
            }
        }
        t.env.metrics.read_from(&t.name, t.read_pos);
        t.file = Some((file, permit));
        t.env.metrics.files_open.inc();
        Ok(t)
    }

    /// Counts the lines already in the file so numbering stays exact, and starts after the
    /// last complete line.
    fn skip_to_end(&mut self, file: &File) -> std::io::Result<()> {
        let (mut pos, mut lines, mut last_end) = (0u64, 0u64, 0u64);
        let mut buf = crate::buffers::take();
        loop {
            let n = file.read_at(&mut buf, pos)?;
            if n == 0 {
                break;
            }
            for i in memchr::memchr_iter(b'\n', &buf[..n]) {
                lines += 1;
                last_end = pos + i as u64 + 1;
            }
            pos += n as u64;
        }
        self.read_pos = last_end;
        self.line_start = last_end;
        self.line = lines;
        Ok(())
    }

    /// Runs until the file is finished, the agent stops, or the sender goes away; lines go
    /// straight into `out`, which is sealed last.
    pub async fn run(mut self, mut out: Batcher) -> Exit {
        let mut exit = self.run_inner(&mut out).await;
        if exit != Exit::Closed && out.seal().await.is_err() {
            exit = Exit::Closed;
        }
        if self.file.take().is_some() {
            self.env.metrics.files_open.dec();
        }
        if exit == Exit::Finished {
            self.ctl.finished.store(true, Ordering::SeqCst);
        }
        exit
    }

    async fn run_inner(&mut self, out: &mut Batcher) -> Exit {
        let mut shutdown = self.env.shutdown.clone();
        let mut rotated_at: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                return Exit::Shutdown;
            }
            let outcome = self.read_available(out).await;
            if out.seal_if_due(Instant::now()).await.is_err() {
                return Exit::Closed;
            }
            match outcome {
                Ok(ReadOutcome::Data) => {
                    // Cooperative budget rather than yield_now: yield_now's deferred wake
                    // was seen to be lost here (tasks parked for good under load).
                    tokio::task::consume_budget().await;
                    continue;
                }
                Ok(ReadOutcome::Closed) => return Exit::Closed,
                Ok(ReadOutcome::Eof) => {}
                Err(e) => {
                    tracing::warn!(file = %self.name, error = %e, "read failed; will retry");
                    self.close();
                }
            }
            let now = Instant::now();
            if self.ctl.unwatched.load(Ordering::SeqCst) {
                // Complete lines are read; a partial last line stays behind the checkpoint
                // for whoever reads the file next.
                return Exit::Finished;
            }
            if self.ctl.rotated.load(Ordering::SeqCst) {
                let since = *rotated_at.get_or_insert(now);
                let quiet = now.duration_since(self.last_data.max(since));
                if quiet >= self.env.options.rotate_wait || self.file.is_none() {
                    // Nothing more will come: ship a final partial line as it is.
                    if self.send_partial(out, true).await.is_err() {
                        return Exit::Closed;
                    }
                    return Exit::Finished;
                }
            }
            if self.partial_due(now) && self.send_partial(out, false).await.is_err() {
                return Exit::Closed;
            }
            let idle = now.duration_since(self.last_data);
            if self.file.is_some()
                && rotated_at.is_none()
                && (idle >= self.env.options.close_inactive
                    || self.env.open_files.available_permits() == 0)
            {
                self.close();
            }
            let deadline = self.next_deadline(now, rotated_at);
            let deadline = out
                .deadline()
                .map_or(deadline, |d| d.max(now).min(deadline));
            tracing::trace!(file = %self.name, read_pos = self.read_pos, line = self.line, "tailer idle");
            tokio::select! {
                () = self.ctl.wake.notified() => {}
                () = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// The soonest moment something time-based is due.
    fn next_deadline(&self, now: Instant, rotated_at: Option<Instant>) -> Instant {
        let o = &self.env.options;
        let mut d = now + Duration::from_secs(3600);
        if !self.pending.is_empty() && self.partial_sent != Some(self.pending.len()) {
            d = d.min(self.pending_since + o.partial_line_timeout);
        }
        if let Some(since) = self.unnamed_since {
            d = d.min(since + o.partial_line_timeout);
        }
        if let Some(at) = rotated_at {
            d = d.min(self.last_data.max(at) + o.rotate_wait);
        }
        if self.file.is_some() {
            d = d.min(self.last_data + o.close_inactive);
        }
        d.max(now + Duration::from_millis(1))
    }

    fn partial_due(&self, now: Instant) -> bool {
        !self.pending.is_empty()
            && self.partial_sent != Some(self.pending.len())
            && now.duration_since(self.pending_since) >= self.env.options.partial_line_timeout
    }

    fn close(&mut self) {
        if self.file.take().is_some() {
            self.env.metrics.files_open.dec();
            tracing::debug!(file = %self.name, "closed idle file");
        }
    }

    /// Reopens the file by identity: at its path, or (after a rename) in its directory.
    async fn reopen(&mut self) -> std::io::Result<bool> {
        let permit = match self.env.open_files.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return Ok(false),
        };
        // Only entries whose `stat` already names this file are opened: the directory may
        // hold FIFOs and devices (`open_file`).
        let found = open_identity(&self.path, self.id)
            .map(|(f, _)| (self.path.clone(), f))
            .or_else(|| {
                regular_siblings(&self.path)
                    .filter(|(_, meta)| FileId::of(meta) == self.id)
                    .find_map(|(p, _)| open_identity(&p, self.id).map(|(f, _)| (p, f)))
            });
        let Some((p, f)) = found else {
            return Ok(false);
        };
        self.path = p;
        self.file = Some((f, permit));
        self.env.metrics.files_open.inc();
        Ok(true)
    }

    /// Reads what is available, up to the per-turn cap, and ships complete lines.
    async fn read_available(&mut self, out: &mut Batcher) -> std::io::Result<ReadOutcome> {
        if self.file.is_none() && !self.reopen().await? {
            if !self.ctl.rotated.load(Ordering::SeqCst) {
                tracing::debug!(file = %self.name, "file not found by identity");
            }
            return Ok(ReadOutcome::Eof);
        }
        let Some((file, _)) = &mut self.file else {
            return Ok(ReadOutcome::Eof);
        };
        let meta = file.metadata()?;
        let size = meta.len();
        if self.reported_size != Some(size) {
            self.reported_size = Some(size);
            self.env.metrics.file_size(&self.name, size);
        }
        if size < self.read_pos || self.rewritten(&meta)? {
            // copytruncate: lines written between our last read and the truncation are
            // only in the copy. Finish them from there before starting the new generation.
            if let Err(e) = self.drain_copy(out).await {
                tracing::warn!(file = %self.name, error = %e, "could not read the truncated file's copy");
            }
            self.truncated(size);
        }
        if self.generation.is_none() {
            let Some((file, _)) = &self.file else {
                return Ok(ReadOutcome::Eof);
            };
            if file.metadata()?.len() == 0 {
                self.unnamed_since = None;
                return Ok(ReadOutcome::Eof);
            }
            // A first line that stays incomplete is named from what it holds, so it ships.
            let waited = *self.unnamed_since.get_or_insert_with(Instant::now);
            let allow_partial = waited.elapsed() >= self.env.options.partial_line_timeout;
            match generation::derive(file, self.id, allow_partial)? {
                Some(g) => {
                    let g = match self.previous.take() {
                        Some(previous) => generation::after_truncation(g, &previous),
                        None => g,
                    };
                    self.generation = Some(Arc::from(g));
                    self.unnamed_since = None;
                }
                None => return Ok(ReadOutcome::Eof),
            }
        }
        let Some(generation) = self.generation.clone() else {
            return Ok(ReadOutcome::Eof);
        };
        let mut chunk = Chunk::new(generation.clone(), self.line);
        let mut turn = 0usize;
        let mut any = false;
        let mut buf = crate::buffers::take();
        while let Some((file, _)) = &self.file {
            // pread: no seek per read, and the position is ours, not the descriptor's.
            let n = file.read_at(&mut buf, self.read_pos)?;
            if n == 0 {
                break;
            }
            // Budget for what this read adds, before it goes anywhere: without it the file
            // waits holding neither its read buffer nor a chunk (pread is positional, so
            // the same bytes are simply read again after the wait).
            if !out.try_reserve(RESERVE_BYTES) {
                drop(buf);
                if chunk.count() > 0 {
                    let next = Chunk::new(generation.clone(), self.line);
                    if out.add(std::mem::replace(&mut chunk, next)).await.is_err() {
                        return Ok(ReadOutcome::Closed);
                    }
                }
                let waiting = Instant::now();
                if out.reserve(RESERVE_BYTES).await.is_err() {
                    return Ok(ReadOutcome::Closed);
                }
                if waiting.elapsed() >= RECHECK_AFTER_WAIT && self.rewritten_now()? {
                    break;
                }
                buf = crate::buffers::take();
                continue;
            }
            any = true;
            self.last_data = Instant::now();
            self.env.metrics.bytes_read(&self.name, n as u64);
            // Exactly what this read can add: a chunk grown by doubling held up to twice
            // its bytes, for every file waiting with one.
            chunk.data.reserve_exact(n + self.pending.len());
            self.split_lines(&buf[..n], &mut chunk);
            turn += n;
            if chunk.data.len() >= CHUNK_BYTES {
                // The read buffer goes back to the pool while the batcher may wait for
                // budget: buffers follow reads in progress, not files waiting.
                drop(buf);
                let next = Chunk::new(generation.clone(), self.line);
                let waiting = Instant::now();
                if out.add(std::mem::replace(&mut chunk, next)).await.is_err() {
                    return Ok(ReadOutcome::Closed);
                }
                if waiting.elapsed() >= RECHECK_AFTER_WAIT && self.rewritten_now()? {
                    break;
                }
                buf = crate::buffers::take();
            }
            if turn >= MAX_READ_PER_TURN {
                break;
            }
        }
        if chunk.count() > 0 && out.add(chunk).await.is_err() {
            return Ok(ReadOutcome::Closed);
        }
        out.release_reserved();
        // After reading anything, check once more before sleeping.
        Ok(if any {
            ReadOutcome::Data
        } else {
            ReadOutcome::Eof
        })
    }

    /// Splits `data` (read at `read_pos`) into lines appended to `chunk`.
    fn split_lines(&mut self, data: &[u8], chunk: &mut Chunk) {
        let n = data.len();
        let max = self.env.options.max_line_bytes;
        let base = self.read_pos;
        let mut start = 0usize;
        for nl in memchr::memchr_iter(b'\n', data) {
            let piece = &data[start..nl];
            if self.pending.is_empty() && !self.overflow {
                let keep = piece.len().min(max);
                chunk.data.extend_from_slice(&piece[..keep]);
                if keep < piece.len() {
                    self.env.metrics.lines_truncated.inc();
                }
            } else {
                let room = max - self.pending.len();
                let keep = piece.len().min(room);
                chunk.data.extend_from_slice(&self.pending);
                chunk.data.extend_from_slice(&piece[..keep]);
                if self.overflow || keep < piece.len() {
                    self.env.metrics.lines_truncated.inc();
                }
                // A long partial line's buffer is not kept for the file's lifetime.
                if self.pending.capacity() > 16 * 1024 {
                    self.pending = Vec::new();
                } else {
                    self.pending.clear();
                }
                self.overflow = false;
            }
            chunk.data.push(b'\n');
            let end = base + nl as u64 + 1;
            chunk.ends.push(end);
            self.line += 1;
            self.line_start = end;
            self.partial_sent = None;
            start = nl + 1;
        }
        if start < n {
            let rest = &data[start..n];
            let room = max - self.pending.len();
            let keep = rest.len().min(room);
            self.pending.extend_from_slice(&rest[..keep]);
            if keep < rest.len() {
                self.overflow = true;
            }
            self.pending_since = Instant::now();
        }
        self.read_pos = base + n as u64;
        self.remember_tail(data);
        self.env
            .metrics
            .lines_read(&self.name, chunk.ends.len() as u64);
    }

    /// Ships the current partial line (flagged partial) under its own number; the
    /// checkpoint stays before it, so it is resent complete later.
    async fn send_partial(&mut self, out: &mut Batcher, last: bool) -> Result<(), ()> {
        if self.pending.is_empty() || self.partial_sent == Some(self.pending.len()) {
            return Ok(());
        }
        let Some(generation) = self.generation.clone() else {
            return Ok(());
        };
        let mut chunk = Chunk::new(generation, self.line);
        chunk.data.extend_from_slice(&self.pending);
        chunk.partial = Some(self.line_start);
        self.partial_sent = Some(self.pending.len());
        if last {
            tracing::debug!(file = %self.name, "finishing with a partial last line");
        }
        out.add(chunk).await.map_err(|_| ())
    }

    /// After a truncation, looks beside the file for its copy (another file whose first
    /// line is this generation's and which is longer than what was read) and reads the
    /// rest of the generation from it. Returns whether a copy was found.
    async fn drain_copy(&mut self, out: &mut Batcher) -> std::io::Result<bool> {
        let Some(generation) = self.generation.clone() else {
            return Ok(false);
        };
        // Older copies of a log whose lives share their first line (a header) start as this
        // generation does too: the copy must also hold the last bytes read where they were
        // read, and of several that do, the newest (the one just made) is taken.
        let candidates = regular_siblings(&self.path)
            .filter(|(_, meta)| FileId::of(meta) != self.id && meta.len() > self.read_pos);
        let mut best: Option<(std::time::SystemTime, PathBuf, File)> = None;
        for (p, _) in candidates {
            let Ok((copy, meta)) = open_regular(&p) else {
                continue;
            };
            if FileId::of(&meta) == self.id || meta.len() <= self.read_pos {
                continue;
            }
            if !generation::same_content(&copy, &generation) || !self.holds_tail(&copy) {
                continue;
            }
            let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            if best
                .as_ref()
                .is_none_or(|(newest, _, _)| modified > *newest)
            {
                best = Some((modified, p, copy));
            }
        }
        if let Some((_, p, copy)) = best {
            tracing::info!(file = %self.name, copy = %p.display(), "reading the rest of the truncated generation from its copy");
            let Some((file, _)) = &mut self.file else {
                return Ok(false);
            };
            let original = std::mem::replace(file, copy);
            self.reading_copy = true;
            let mut result = Ok(true);
            loop {
                match Box::pin(self.read_available(out)).await {
                    Ok(ReadOutcome::Data) => continue,
                    Ok(_) => break,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            self.reading_copy = false;
            if let Some((file, _)) = &mut self.file {
                *file = original;
            }
            return result;
        }
        Ok(false)
    }

    /// Keeps the last [`TAIL_BYTES`] of what was read, `data` having just been read.
    fn remember_tail(&mut self, data: &[u8]) {
        if data.len() >= TAIL_BYTES {
            self.tail.clear();
            self.tail
                .extend_from_slice(&data[data.len() - TAIL_BYTES..]);
        } else {
            self.tail.extend_from_slice(data);
            let extra = self.tail.len().saturating_sub(TAIL_BYTES);
            self.tail.drain(..extra);
        }
    }

    /// Whether `copy` holds the last bytes read where they were read (true when they are not
    /// known, after a start from a checkpoint).
    fn holds_tail(&self, copy: &File) -> bool {
        if self.tail.is_empty() {
            return true;
        }
        let mut there = vec![0u8; self.tail.len()];
        let at = self.read_pos - self.tail.len() as u64;
        copy.read_exact_at(&mut there, at).is_ok() && there == self.tail
    }

    /// Whether the file no longer starts as the generation being read: truncated and
    /// written past the read position while this tailer did not look (parked behind an
    /// unreachable aggregator for hours, say). Its size alone cannot tell; its first line
    /// can, unless the new content begins with the very same line.
    /// A file deleted and created again on the same inode is caught by its birth time
    /// (`meta` is the open file's), whatever its first line.
    fn rewritten(&self, meta: &std::fs::Metadata) -> std::io::Result<bool> {
        match (&self.file, &self.generation) {
            (Some((file, _)), Some(generation)) if self.read_pos > 0 && !self.reading_copy => {
                Ok(!generation::same_birth(meta, generation)
                    || !generation::starts_as(file, generation)?)
            }
            _ => Ok(false),
        }
    }

    fn rewritten_now(&self) -> std::io::Result<bool> {
        match &self.file {
            Some((file, _)) => self.rewritten(&file.metadata()?),
            None => Ok(false),
        }
    }

    /// The file shrank below what was read, or was rewritten: copytruncate or a truncation.
    /// What follows is a new generation, numbered from 0.
    fn truncated(&mut self, size: u64) {
        tracing::info!(file = %self.name, size, read = self.read_pos, "file truncated; starting a new generation");
        self.env.metrics.truncations.inc();
        self.env.metrics.read_from(&self.name, 0);
        self.read_pos = 0;
        self.tail.clear();
        self.line_start = 0;
        self.line = 0;
        self.pending.clear();
        self.overflow = false;
        self.partial_sent = None;
        self.previous = self.generation.take().or(self.previous.take());
    }
}

#[derive(Debug, PartialEq, Eq)]
enum ReadOutcome {
    Data,
    Eof,
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batcher::{Batch, Budget};
    use std::io::Write;
    use tokio::sync::mpsc;

    /// A tailer of `path` from its first line, its batches on the returned channel; `stop`
    /// ends it.
    fn tailer_of(
        path: &std::path::Path,
        partial_line_timeout: Duration,
    ) -> (
        tokio::task::JoinHandle<Exit>,
        mpsc::Receiver<Box<Batch>>,
        Arc<Control>,
        watch::Sender<bool>,
    ) {
        let options = Arc::new(PipelineOptions {
            batch_lines: 1000,
            batch_bytes: 1 << 20,
            linger: Duration::from_millis(5),
            read_from: ReadFrom::Beginning,
            max_line_bytes: 1024,
            partial_line_timeout,
            close_inactive: Duration::from_secs(60),
            rotate_wait: Duration::from_millis(50),
            lines_per_sec: 0,
            bytes_per_sec: 0,
            retry_initial: Duration::from_millis(1),
            retry_max: Duration::from_millis(5),
            multiline: None,
        });
        let (stop, shutdown) = watch::channel(false);
        let open_files = Arc::new(Semaphore::new(4));
        let env = TailerEnv {
            options: options.clone(),
            metrics: Arc::new(Metrics::default()),
            open_files: open_files.clone(),
            shutdown,
        };
        let (file, meta) = open_regular(path).expect("open");
        let permit = open_files.try_acquire_owned().expect("permit");
        let ctl = Arc::new(Control::default());
        let t = Tailer::new(
            path.to_path_buf(),
            path.to_string_lossy().into_owned(),
            file,
            permit,
            FileId::of(&meta),
            Start::Fresh(ReadFrom::Beginning),
            env,
            ctl.clone(),
        )
        .expect("tailer");
        let (tx, rx) = mpsc::channel(64);
        let batcher = Batcher::new(
            Arc::from("h"),
            Arc::from("/f"),
            options,
            Budget::new(1 << 20),
            tx,
        );
        (tokio::spawn(t.run(batcher)), rx, ctl, stop)
    }

    /// Every (generation, line, content, partial) the tailer has shipped, until `want`
    /// lines have come (10 s at most).
    async fn lines(
        rx: &mut mpsc::Receiver<Box<Batch>>,
        want: usize,
    ) -> Vec<(String, u64, String, bool)> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while out.len() < want {
            let Ok(Some(b)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                break;
            };
            let d = logship_wire::decode_file(&b.body).expect("decodes");
            for l in &d.lines {
                out.push((
                    d.generation.to_string(),
                    l.number,
                    String::from_utf8_lossy(&l.content).into_owned(),
                    l.partial,
                ));
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_are_numbered_and_a_partial_line_ships_after_its_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"one\ntwo\nthr").expect("write");
        let (task, mut rx, ctl, stop) = tailer_of(&path, Duration::from_millis(100));
        let got = lines(&mut rx, 3).await;
        let shape: Vec<(u64, &str, bool)> = got
            .iter()
            .map(|(_, n, c, p)| (*n, c.as_str(), *p))
            .collect();
        assert_eq!(
            shape,
            vec![(0, "one", false), (1, "two", false), (2, "thr", true)]
        );
        // Completed later: the same line number again, now whole (last write wins).
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(b"ee\nfour\n").expect("append");
        ctl.wake.notify_one();
        let more = lines(&mut rx, 2).await;
        let shape: Vec<(u64, &str, bool)> = more
            .iter()
            .map(|(_, n, c, p)| (*n, c.as_str(), *p))
            .collect();
        assert_eq!(shape, vec![(2, "three", false), (3, "four", false)]);
        stop.send(true).expect("stop");
        assert_eq!(task.await.expect("tailer"), Exit::Shutdown);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_truncated_file_starts_a_new_generation_from_line_0() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"first life 0\nfirst life 1\n").expect("write");
        let (task, mut rx, ctl, stop) = tailer_of(&path, Duration::from_secs(5));
        let old = lines(&mut rx, 2).await;
        assert_eq!(old.len(), 2);
        std::fs::write(&path, b"second\n").expect("truncate and write");
        ctl.wake.notify_one();
        let new = lines(&mut rx, 1).await;
        assert_eq!(new.len(), 1, "{new:?}");
        assert_eq!((new[0].1, new[0].2.as_str()), (0, "second"));
        assert_ne!(new[0].0, old[0].0, "a new generation");
        stop.send(true).expect("stop");
        assert_eq!(task.await.expect("tailer"), Exit::Shutdown);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_renamed_away_is_drained_then_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"before 0\n").expect("write");
        let (task, mut rx, ctl, _stop) = tailer_of(&path, Duration::from_secs(5));
        assert_eq!(lines(&mut rx, 1).await.len(), 1);
        // Rotated by rename; the writer still holds the old file and appends once more.
        let rotated = dir.path().join("a.log.1");
        std::fs::rename(&path, &rotated).expect("rename");
        let mut old = std::fs::OpenOptions::new()
            .append(true)
            .open(&rotated)
            .expect("open rotated");
        old.write_all(b"after rename 1\n").expect("append");
        std::fs::write(&path, b"new file\n").expect("create the new file");
        // What discovery does when the path leads to another file.
        ctl.rotated.store(true, Ordering::SeqCst);
        ctl.wake.notify_one();
        let late = lines(&mut rx, 1).await;
        assert_eq!(
            late.iter().map(|l| (l.1, l.2.as_str())).collect::<Vec<_>>(),
            vec![(1, "after rename 1")],
            "the line written to the renamed file is read, in the same generation"
        );
        // Nothing more comes to it within rotate_wait: the tailer is done with it (the new
        // file is discovery's, with a tailer of its own).
        let exit = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the tailer ends within rotate_wait")
            .expect("tailer");
        assert_eq!(exit, Exit::Finished);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_line_over_max_line_bytes_is_cut_there_even_across_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        // 1024 is the test's max_line_bytes: one long line written in two parts, then a
        // short one.
        std::fs::write(&path, vec![b'a'; 700]).expect("write");
        let (task, mut rx, ctl, stop) = tailer_of(&path, Duration::from_millis(50));
        // The first part shipped as a partial line: the tailer has read it.
        let first = lines(&mut rx, 1).await;
        assert_eq!(
            first
                .iter()
                .map(|l| (l.1, l.2.len(), l.3))
                .collect::<Vec<_>>(),
            vec![(0, 700, true)]
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(&[b'b'; 900]).expect("append");
        f.write_all(b"\nshort\n").expect("append");
        ctl.wake.notify_one();
        let got = lines(&mut rx, 2).await;
        let shape: Vec<(u64, usize, bool)> = got.iter().map(|l| (l.1, l.2.len(), l.3)).collect();
        assert_eq!(shape, vec![(0, 1024, false), (1, 5, false)], "{got:?}");
        assert!(got[0].2.starts_with(&"a".repeat(700)) && got[0].2.ends_with(&"b".repeat(324)));
        stop.send(true).expect("stop");
        assert_eq!(task.await.expect("tailer"), Exit::Shutdown);
    }
}
