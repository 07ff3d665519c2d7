//! The batcher: turns the tailer's chunks into request bodies. A batch closes at
//! `batch_lines`, `batch_bytes`, or `linger` after its first line, whichever comes first,
//! and when the generation changes. Lines are appended straight into the compact wire
//! encoding (the multi-file form, one section, each line with the time it was read), so the
//! body is ready to send when the batch closes.
//!
//! Each sealed batch holds permits from the agent-wide buffer budget until it is
//! acknowledged: the memory of everything waiting or in flight is bounded whatever the
//! backlog, and the wait for a permit is back-pressure up to the tailer.
//!
//! The batcher runs inside its file's tailer task (the tailer hands it each chunk and asks
//! it to seal when `linger` is due), not as a task of its own: a task and a channel per
//! watched file were ~2 KB of the agent's memory per file, idle or not.

use std::sync::Arc;

use logship_wire::multi::Writer;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::PipelineOptions;

/// Lines read from a file, handed to the batcher.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub generation: Arc<str>,
    /// Number of the first line in `data`.
    pub first_line: u64,
    /// Line contents, each followed by `\n`; the last one has none when `partial` is set.
    pub data: Vec<u8>,
    /// File offset just after each complete line (for checkpoints).
    pub ends: Vec<u64>,
    /// The last line is partial and starts at this offset (its checkpoint stays there).
    pub partial: Option<u64>,
}

impl Chunk {
    pub(crate) fn new(generation: Arc<str>, first_line: u64) -> Self {
        Chunk {
            generation,
            first_line,
            // Grown as lines come: most turns of a quiet file read nothing.
            data: Vec::new(),
            ends: Vec::new(),
            partial: None,
        }
    }

    /// Lines in the chunk, partial one included.
    pub fn count(&self) -> usize {
        self.ends.len() + usize::from(self.partial.is_some())
    }
}

/// A closed batch, ready for the sender.
#[derive(Debug)]
pub struct Batch {
    /// The compact body, uncompressed.
    pub body: Vec<u8>,
    pub generation: Arc<str>,
    pub first_line: u64,
    pub lines: u32,
    /// Content bytes (without newlines).
    pub bytes: u64,
    /// Position to checkpoint once acknowledged: byte offset and next line number.
    pub end_offset: u64,
    pub end_line: u64,
    /// Budget held until the batch is acknowledged.
    pub permit: Option<OwnedSemaphorePermit>,
    /// When its first line was read: how long a line waits for its ack is measured from here.
    pub read_at: std::time::Instant,
    /// The same moment on the wall clock (ms since the epoch): the time sinks that carry one
    /// per line (Loki, OTLP) give the batch's lines, the same at every retry.
    pub read_at_ms: u64,
    /// Its last line is partial: the next batch sends that line again, complete, and must
    /// not be stored before it (see the sender's window).
    pub partial_last: bool,
}

/// The agent-wide budget of buffered batch bytes, counted in KiB permits.
#[derive(Debug, Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    /// Total permits: a batch never asks for more, or it would wait forever.
    units: u32,
}

impl Budget {
    pub fn new(bytes: u64) -> Self {
        let units = u32::try_from((bytes / 1024).max(1))
            .unwrap_or(u32::MAX >> 3)
            .min(Semaphore::MAX_PERMITS as u32);
        Budget {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// Waits until `bytes` fit in the budget.
    pub async fn acquire(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let want = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.units);
        self.sem.clone().acquire_many_owned(want).await.ok()
    }

    /// Takes `bytes` more into `held` if the budget has them now; `false` if not.
    fn try_grow(&self, held: &mut Option<OwnedSemaphorePermit>, bytes: usize) -> bool {
        let want = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        match self.sem.clone().try_acquire_many_owned(want) {
            Ok(p) => {
                match held {
                    Some(h) => h.merge(p),
                    None => *held = Some(p),
                }
                true
            }
            Err(_) => false,
        }
    }

    /// KiB of the budget in use.
    pub fn used_kib(&self) -> u64 {
        u64::from(self.units) - self.sem.available_permits() as u64
    }
}

/// An open batch.
#[derive(Debug)]
struct Open {
    writer: Writer,
    /// Budget held for the body as it grows (in `GROW` steps): open batches count against
    /// `max_buffered_bytes` like sealed ones, so a thousand active files cannot each hold a
    /// megabyte-sized open batch beside the budget.
    permit: Option<OwnedSemaphorePermit>,
    generation: Arc<str>,
    bytes: u64,
    end_offset: u64,
    end_line: u64,
    deadline: Instant,
    /// When the first line was added, just after it was read.
    started: Instant,
    /// The same, on the wall clock (ms since the epoch).
    started_ms: u64,
    /// The last line added is partial.
    partial_last: bool,
}

/// Now on the wall clock, ms since the epoch.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An open batch takes budget in steps of this many bytes.
const GROW: usize = 16 * 1024;

/// One file's batcher state.
#[derive(Debug)]
pub struct Batcher {
    host: Arc<str>,
    file: Arc<str>,
    options: Arc<PipelineOptions>,
    budget: Budget,
    output: mpsc::Sender<Box<Batch>>,
    open: Option<Open>,
    /// Budget taken before a chunk was read ([`Batcher::reserve`]), spent first by the lines
    /// of that chunk; what is left returns when the chunk is in.
    reserved: Option<OwnedSemaphorePermit>,
    /// With a `multiline` rule: the lines of the event being gathered, outside any batch
    /// (so the checkpoint stays before them) until the event is known complete — the next
    /// event starts, `max_lines`, or `timeout` after its last line.
    held: Vec<HeldLine>,
    /// When the last held line came.
    held_at: Option<Instant>,
    /// Content bytes held: an event is closed before it outgrows a batch (`batch_bytes`),
    /// which also bounds the memory a file's held lines take outside the budget.
    held_bytes: usize,
}

/// A line of the event being gathered.
#[derive(Debug)]
struct HeldLine {
    generation: Arc<str>,
    line: u64,
    content: Vec<u8>,
    partial: bool,
    end: (u64, u64),
    ms: u64,
}

/// The sender went away.
#[derive(Debug)]
pub struct Gone;

impl Batcher {
    pub fn new(
        host: Arc<str>,
        file: Arc<str>,
        options: Arc<PipelineOptions>,
        budget: Budget,
        output: mpsc::Sender<Box<Batch>>,
    ) -> Self {
        Batcher {
            host,
            file,
            options,
            budget,
            output,
            open: None,
            reserved: None,
            held: Vec::new(),
            held_at: None,
            held_bytes: 0,
        }
    }

    /// When the open batch's `linger` runs out, or a gathered event's `timeout`, whichever
    /// comes first.
    pub fn deadline(&self) -> Option<Instant> {
        let open = self.open.as_ref().map(|o| o.deadline);
        let held = self.held_deadline();
        match (open, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn held_deadline(&self) -> Option<Instant> {
        let m = self.options.multiline.as_ref()?;
        self.held_at
            .filter(|_| !self.held.is_empty())
            .map(|t| t + m.timeout)
    }

    /// Closes a gathered event whose `timeout` ran out, and seals the open batch if its
    /// `linger` ran out, by `now`.
    pub async fn seal_if_due(&mut self, now: Instant) -> Result<(), Gone> {
        if self.held_deadline().is_some_and(|d| d <= now) {
            self.release_held().await?;
        }
        if self.open.as_ref().is_some_and(|o| o.deadline <= now) {
            self.seal_open().await?;
        }
        Ok(())
    }

    /// Adds a line to the event being gathered, or closes that event and starts the next.
    async fn gather(
        &mut self,
        generation: &Arc<str>,
        line: u64,
        content: &[u8],
        partial: bool,
        end: (u64, u64),
        ms: u64,
    ) -> Result<(), Gone> {
        // The options, not the rule, are cloned (an `Arc`): no allocation per line.
        let options = self.options.clone();
        let Some(m) = &options.multiline else {
            return self
                .push(generation, line, content, partial, end, ms, false)
                .await;
        };
        let joins = self.held.last().is_some_and(|last| {
            &last.generation == generation && last.line + 1 == line && !last.partial
        }) && self.held.len() < m.max_lines
            && self.held_bytes + content.len() <= self.options.batch_bytes
            && m.continues(content);
        if !joins {
            self.release_held().await?;
        }
        self.held_bytes += content.len();
        self.held.push(HeldLine {
            generation: generation.clone(),
            line,
            content: content.to_vec(),
            partial,
            end,
            ms,
        });
        self.held_at = Some(Instant::now());
        if partial {
            // The last line read so far, shipped as the tailer asks: the event goes with it.
            self.release_held().await?;
        }
        Ok(())
    }

    /// Puts the gathered event into the open batch, whole: the batch is sealed first when
    /// the event would not fit in it.
    async fn release_held(&mut self) -> Result<(), Gone> {
        if self.held.is_empty() {
            return Ok(());
        }
        let lines = std::mem::take(&mut self.held);
        self.held_at = None;
        self.held_bytes = 0;
        let bytes: usize = lines.iter().map(|l| l.content.len() + 24).sum();
        if let Some(o) = &self.open {
            let full = o.writer.count() as usize + lines.len() > self.options.batch_lines
                || o.writer.encoded_len() + bytes > self.options.batch_bytes;
            if o.writer.count() > 0 && full {
                self.seal_open().await?;
            }
        }
        for (i, l) in lines.iter().enumerate() {
            self.push(
                &l.generation,
                l.line,
                &l.content,
                l.partial,
                l.end,
                l.ms,
                i > 0,
            )
            .await?;
        }
        Ok(())
    }

    /// Appends one line; seals first when it cannot join the open batch, and after it
    /// when the batch is full.
    #[allow(clippy::too_many_arguments)]
    async fn push(
        &mut self,
        generation: &Arc<str>,
        line: u64,
        content: &[u8],
        partial: bool,
        end: (u64, u64),
        ms: u64,
        continues: bool,
    ) -> Result<(), Gone> {
        if let Some(o) = &self.open {
            // A new generation (after truncation) or a gap never shares a batch.
            if &o.generation != generation || o.writer.start() + u64::from(o.writer.count()) != line
            {
                self.seal_open().await?;
            }
        }
        // Room for the line, within the budget: the body's memory is exactly what the batch
        // holds of `max_buffered_bytes` (grown geometrically, never by the vector's own
        // doubling, which let bodies take twice their share).
        loop {
            if self.open.is_none() {
                // The wait for budget here is the back-pressure up to the tailer.
                let header = 64 + self.host.len() + self.file.len() + generation.len();
                let first = GROW.max(header + content.len() + 24);
                let permit = match self.take_reserved(first) {
                    Some(p) => Some(p),
                    None => self.budget.acquire(first).await,
                };
                let mut writer = Writer::new(&self.host, &self.file, generation, line, ms);
                let held = permit.as_ref().map_or(0, |p| p.num_permits() * 1024);
                writer.reserve_exact(held.saturating_sub(writer.encoded_len()));
                self.open = Some(Open {
                    writer,
                    permit,
                    generation: generation.clone(),
                    bytes: 0,
                    end_offset: 0,
                    end_line: 0,
                    deadline: Instant::now() + self.options.linger,
                    started: Instant::now(),
                    started_ms: ms,
                    partial_last: false,
                });
            }
            let Some(o) = self.open.as_mut() else {
                return Ok(());
            };
            let need = o.writer.encoded_len() + content.len() + 24;
            let held = o.permit.as_ref().map_or(0, |p| p.num_permits() * 1024);
            if need <= held {
                break;
            }
            let more = (need - held).max(held).max(GROW);
            let from_reserve = self.reserved.is_some();
            let grown = if from_reserve {
                // The reservation covers this chunk's lines: spend it before the budget.
                let more = (need - held).max(GROW);
                match self.take_reserved(more) {
                    Some(p) => {
                        let o = self.open.as_mut().ok_or(Gone)?;
                        match &mut o.permit {
                            Some(h) => h.merge(p),
                            None => o.permit = Some(p),
                        }
                        true
                    }
                    None => false,
                }
            } else {
                false
            };
            let Some(o) = self.open.as_mut() else {
                return Ok(());
            };
            if grown || self.budget.try_grow(&mut o.permit, more) {
                let held = o.permit.as_ref().map_or(0, |p| p.num_permits() * 1024);
                o.writer
                    .reserve_exact(held.saturating_sub(o.writer.encoded_len()));
                break;
            }
            if o.writer.count() == 0 {
                // One line larger than the budget allows: it goes alone, over budget.
                break;
            }
            // No budget to grow: send what the batch holds rather than wait with it open.
            self.seal_open().await?;
        }
        let Some(o) = self.open.as_mut() else {
            return Ok(());
        };
        o.writer.push_in_event(content, partial, continues, ms);
        o.partial_last = partial;
        o.bytes += content.len() as u64;
        (o.end_offset, o.end_line) = end;
        // A partial line always ends its batch: it is the last line read so far.
        if partial
            || o.writer.count() as usize >= self.options.batch_lines
            || o.writer.encoded_len() >= self.options.batch_bytes
        {
            self.seal_open().await?;
        }
        Ok(())
    }

    /// Adds a chunk's lines, sealing batches as they fill.
    /// Takes `bytes` of budget for the next read, before reading: a file that has to wait
    /// for budget waits holding nothing it read (with many active files, their chunks
    /// waiting outside the budget were the agent's largest use of memory). An open batch is
    /// sealed first rather than kept open while waiting, as in [`push`](Self::push).
    pub async fn reserve(&mut self, bytes: usize) -> Result<(), Gone> {
        if self.try_reserve(bytes) {
            return Ok(());
        }
        self.seal_open().await?;
        self.reserved = self.budget.acquire(bytes).await;
        Ok(())
    }

    /// Returns an unused reservation (a read that produced no complete line).
    pub fn release_reserved(&mut self) {
        self.reserved = None;
    }

    /// As [`reserve`](Self::reserve) when the budget has `bytes` now; `false` if not.
    pub fn try_reserve(&mut self, bytes: usize) -> bool {
        self.reserved.is_some() || self.budget.try_grow(&mut self.reserved, bytes)
    }

    /// Budget for `bytes`: from the reservation when it has enough, else from the shared
    /// budget now if it can (`try_grow`).
    fn take_reserved(&mut self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let want = bytes.div_ceil(1024).max(1);
        let r = self.reserved.as_mut()?;
        if r.num_permits() > want {
            r.split(want)
        } else {
            self.reserved.take()
        }
    }

    /// Adds one complete line whose content may hold any bytes, `\n` included (a journal
    /// entry's message), read at `ms`; `line` must follow the lines added before.
    pub async fn add_line(
        &mut self,
        generation: &Arc<str>,
        line: u64,
        content: &[u8],
        ms: u64,
    ) -> Result<(), Gone> {
        self.push(
            generation,
            line,
            content,
            false,
            (line + 1, line + 1),
            ms,
            false,
        )
        .await
    }

    pub async fn add(&mut self, chunk: Chunk) -> Result<(), Gone> {
        // The chunk was read just now: its lines' time (ms on the wall clock).
        let ms = wall_ms();
        let mut line = chunk.first_line;
        let mut pos = 0usize;
        for &end in &chunk.ends {
            let nl =
                memchr::memchr(b'\n', &chunk.data[pos..]).map_or(chunk.data.len(), |i| pos + i);
            self.gather(
                &chunk.generation,
                line,
                &chunk.data[pos..nl],
                false,
                (end, line + 1),
                ms,
            )
            .await?;
            pos = (nl + 1).min(chunk.data.len());
            line += 1;
        }
        if let Some(start) = chunk.partial {
            self.gather(
                &chunk.generation,
                line,
                &chunk.data[pos..],
                true,
                (start, line),
                ms,
            )
            .await?;
        }
        // What the chunk did not need goes back.
        self.reserved = None;
        Ok(())
    }

    /// Closes the open batch, with a gathered event in it: takes its budget, hands it to
    /// the sender (the end of a file, a rotation, shutdown).
    pub async fn seal(&mut self) -> Result<(), Gone> {
        self.release_held().await?;
        self.seal_open().await
    }

    /// Closes the open batch as it is (a gathered event stays gathered).
    async fn seal_open(&mut self) -> Result<(), Gone> {
        let Some(o) = self.open.take() else {
            return Ok(());
        };
        let first_line = o.writer.start();
        let lines = o.writer.count();
        let body = o.writer.finish();
        // The batch keeps the budget it took while open.
        let permit = o.permit;
        self.output
            .send(Box::new(Batch {
                body,
                generation: o.generation,
                first_line,
                lines,
                bytes: o.bytes,
                end_offset: o.end_offset,
                end_line: o.end_line,
                permit,
                read_at: o.started.into_std(),
                read_at_ms: o.started_ms,
                partial_last: o.partial_last,
            }))
            .await
            .map_err(|_| Gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn options(batch_lines: usize) -> Arc<PipelineOptions> {
        Arc::new(PipelineOptions {
            batch_lines,
            batch_bytes: 1 << 20,
            linger: Duration::from_secs(60),
            read_from: crate::config::ReadFrom::Beginning,
            max_line_bytes: 1024,
            partial_line_timeout: Duration::from_secs(1),
            close_inactive: Duration::from_secs(60),
            rotate_wait: Duration::from_secs(1),
            lines_per_sec: 0,
            bytes_per_sec: 0,
            retry_initial: Duration::from_millis(1),
            retry_max: Duration::from_millis(5),
            multiline: None,
        })
    }

    fn batcher(batch_lines: usize, budget: u64) -> (Batcher, mpsc::Receiver<Box<Batch>>) {
        let (tx, rx) = mpsc::channel(64);
        let b = Batcher::new(
            Arc::from("h"),
            Arc::from("/f"),
            options(batch_lines),
            Budget::new(budget),
            tx,
        );
        (b, rx)
    }

    /// A chunk of `lines` (numbered from `first`, each `"l<n>\n"`) read at `offset`, the
    /// last one partial if `partial`.
    fn chunk(generation: &str, first: u64, lines: u64, offset: u64, partial: bool) -> Chunk {
        let mut c = Chunk::new(Arc::from(generation), first);
        let mut at = offset;
        for n in first..first + lines {
            let text = format!("l{n}");
            c.data.extend_from_slice(text.as_bytes());
            if partial && n + 1 == first + lines {
                c.partial = Some(at);
            } else {
                c.data.push(b'\n');
                at += text.len() as u64 + 1;
                c.ends.push(at);
            }
        }
        c
    }

    fn contents(b: &Batch) -> (u64, Vec<String>) {
        let d = logship_wire::decode_file(&b.body).expect("decodes");
        (
            d.lines[0].number,
            d.lines
                .iter()
                .map(|l| String::from_utf8_lossy(&l.content).into_owned())
                .collect(),
        )
    }

    /// A Java stack trace, gathered under a `start` rule: its lines go into one batch,
    /// marked as continuing the event; an event that would not fit the open batch starts
    /// the next one; the last event waits (outside any batch, the checkpoint before it)
    /// until its timeout.
    #[tokio::test]
    async fn events_are_gathered_whole_and_never_split_across_batches() {
        let regex = regex::bytes::Regex::new(r"^\d{4}-").expect("regex");
        let mut o = (*options(4)).clone();
        o.multiline = Some(crate::config::Multiline {
            pattern: regex.as_str().to_owned(),
            regex,
            matches_continuation: false,
            max_lines: 4,
            timeout: Duration::from_millis(50),
        });
        let (tx, mut rx) = mpsc::channel(64);
        let mut b = Batcher::new(
            Arc::from("h"),
            Arc::from("/f"),
            Arc::new(o),
            Budget::new(1 << 20),
            tx,
        );
        let text = "2026-12-08 one\n2026-12-08 boom\n\tat a.B(B.java:1)\n\tat a.C(C.java:2)\nCaused by: x\n2026-12-08 after\n";
        let mut c = Chunk::new(Arc::from("g"), 0);
        let mut at = 0;
        for l in text.lines() {
            c.data.extend_from_slice(l.as_bytes());
            c.data.push(b'\n');
            at += l.len() as u64 + 1;
            c.ends.push(at);
        }
        b.add(c).await.expect("add");
        // "one" went into a batch; the 4-line event did not fit beside it (batch_lines 4
        // would have split it): "one" was sealed alone, the event fills the next batch.
        let first = rx.recv().await.expect("first batch");
        assert_eq!((first.first_line, first.lines), (0, 1));
        let second = rx.recv().await.expect("second batch");
        assert_eq!((second.first_line, second.lines), (1, 4));
        assert_eq!(
            logship_wire::multi::continues(&second.body),
            Some(vec![false, true, true, true])
        );
        // "after" waits as the start of an event; its timeout puts it in a batch.
        assert!(rx.try_recv().is_err());
        let due = b.deadline().expect("a deadline");
        tokio::time::sleep_until(due).await;
        b.seal_if_due(tokio::time::Instant::now())
            .await
            .expect("due");
        b.seal().await.expect("seal");
        let third = rx.recv().await.expect("third batch");
        assert_eq!((third.first_line, third.lines, third.end_line), (5, 1, 6));
    }

    #[tokio::test]
    async fn batches_close_at_batch_lines_with_exact_checkpoints() {
        let (mut b, mut rx) = batcher(3, 1 << 20);
        b.add(chunk("g", 0, 7, 0, false)).await.expect("add");
        b.seal().await.expect("seal");
        drop(b);
        let mut got = Vec::new();
        while let Some(batch) = rx.recv().await {
            got.push(batch);
        }
        let shapes: Vec<(u64, u32, u64, u64)> = got
            .iter()
            .map(|b| (b.first_line, b.lines, b.end_line, b.end_offset))
            .collect();
        // "l0\n".."l6\n" are 3 bytes each: a batch's checkpoint is just after its last line.
        assert_eq!(shapes, vec![(0, 3, 3, 9), (3, 3, 6, 18), (6, 1, 7, 21)]);
        assert_eq!(
            contents(&got[1]),
            (3, vec!["l3".into(), "l4".into(), "l5".into()])
        );
    }

    #[tokio::test]
    async fn a_partial_line_ends_its_batch_and_is_not_checkpointed_past() {
        let (mut b, mut rx) = batcher(100, 1 << 20);
        b.add(chunk("g", 0, 3, 0, true)).await.expect("add");
        let batch = rx.recv().await.expect("sealed at the partial line");
        assert_eq!((batch.lines, batch.end_line, batch.end_offset), (3, 2, 6));
        let d = logship_wire::decode_file(&batch.body).expect("decodes");
        assert!(d.lines[2].partial && !d.lines[1].partial);
    }

    #[tokio::test]
    async fn a_new_generation_never_shares_a_batch() {
        let (mut b, mut rx) = batcher(100, 1 << 20);
        b.add(chunk("old", 0, 2, 0, false)).await.expect("add");
        b.add(chunk("new", 0, 2, 0, false)).await.expect("add");
        b.seal().await.expect("seal");
        let first = rx.recv().await.expect("old");
        let second = rx.recv().await.expect("new");
        assert_eq!((&*first.generation, first.lines), ("old", 2));
        assert_eq!((&*second.generation, second.lines), ("new", 2));
    }

    #[tokio::test]
    async fn open_and_sealed_batches_hold_budget_until_acknowledged() {
        // 64 KiB of budget: sealed batches keep theirs until dropped (acknowledged).
        let (mut b, mut rx) = batcher(1000, 64 * 1024);
        let budget = b.budget.clone();
        let mut c = Chunk::new(Arc::from("g"), 0);
        let line = vec![b'x'; 1000];
        for n in 0..40u64 {
            c.data.extend_from_slice(&line);
            c.data.push(b'\n');
            c.ends.push((n + 1) * 1001);
        }
        b.add(c).await.expect("add");
        b.seal().await.expect("seal");
        let batch = rx.recv().await.expect("batch");
        assert!(budget.used_kib() >= 39, "{} KiB held", budget.used_kib());
        drop(batch);
        assert_eq!(budget.used_kib(), 0, "acknowledged: the budget returns");
    }
}
