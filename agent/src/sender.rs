//! The sender: delivers one file's batches in order, one at a time, and moves the file's
//! checkpoint after each acknowledgement.
//!
//! Retry policy (what the sink's [`Outcome`] means here): retryable failures are retried
//! without end with full-jitter backoff, honouring `Retry-After` — the pipeline parks, and
//! its bounded channels carry the back-pressure up to the tailer. 413 splits the batch in
//! halves. Any other refusal is a poison batch: logged, counted, written to the dead-letter
//! directory, and the pipeline moves on. Rate limits (per file and agent-wide) and the cap
//! on requests in flight apply before each attempt.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::{mpsc, Semaphore};

use crate::backoff::Backoff;
use crate::batcher::Batch;
use crate::checkpoint::{Checkpoint, Checkpoints, FileId};
use crate::config::PipelineOptions;
use crate::metrics::Metrics;
use crate::sink::{CurrentSink, Outcome, Sink};
use crate::tailer::Control;

type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// Batches of one file in flight at once (one for a sink that does not place lines by
/// their number).
const WINDOW: usize = 2;

/// A lines/s or bytes/s limit; 0 means none.
#[derive(Debug)]
pub struct Limit {
    limiter: Option<(Direct, u32)>,
}

impl Limit {
    pub fn per_second(rate: u64) -> Self {
        let rate = u32::try_from(rate).unwrap_or(u32::MAX);
        Limit {
            limiter: NonZeroU32::new(rate)
                .map(|r| (RateLimiter::direct(Quota::per_second(r)), rate)),
        }
    }

    /// Waits until `n` units may pass; amounts above one second's quota pass in slices.
    pub async fn take(&self, mut n: u64) {
        let Some((l, burst)) = &self.limiter else {
            return;
        };
        while n > 0 {
            let k = n.min(u64::from(*burst)) as u32;
            if let Some(k) = NonZeroU32::new(k) {
                let _ = l.until_n_ready(k).await;
            }
            n -= u64::from(k);
        }
    }
}

/// What every sender shares.
#[derive(Debug)]
pub struct SendEnv {
    /// Swapped by a reload that changes `[sink]` (URL, token, …).
    pub sink: Arc<CurrentSink>,
    pub checkpoints: Arc<Checkpoints>,
    pub metrics: Arc<Metrics>,
    pub in_flight: Arc<Semaphore>,
    /// Agent-wide (lines/s, bytes/s) limits; swapped by a reload.
    pub global: std::sync::RwLock<Arc<(Limit, Limit)>>,
    pub dead_letters: Arc<crate::dead_letter::DeadLetters>,
    /// When each refusing endpoint was last logged, so a wrong token on a thousand files is
    /// one error a minute, not a thousand.
    pub park_log: ParkLog,
}

impl SendEnv {
    /// The sink in force now.
    pub fn sink(&self) -> Arc<dyn Sink> {
        self.sink.get()
    }

    /// The agent-wide limits in force now.
    pub fn global(&self) -> Arc<(Limit, Limit)> {
        self.global
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Rate-limits the "endpoint refuses" error to once a minute per endpoint.
/// Errors about refusing endpoints, once a minute each.
pub type ParkLog = logship_common::log_limit::LogLimit<String>;

impl std::fmt::Debug for dyn Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

/// See [`Sender::on_ack`].
pub type OnAck = Arc<dyn Fn(u64) + Send + Sync>;

/// One file's sender.
pub struct Sender {
    pub env: Arc<SendEnv>,
    pub file: Arc<str>,
    /// The file's identity, whose checkpoint moves with each acknowledgement; `None` for a
    /// stream that cannot be read again (stdin), which has no checkpoint.
    pub id: Option<FileId>,
    /// Told the next line number after each acknowledged batch, in order (a source that
    /// keeps its own checkpoint: journald's cursor).
    pub on_ack: Option<OnAck>,
    pub options: Arc<PipelineOptions>,
    pub ctl: Arc<Control>,
}

enum Delivery {
    Done,
    TooLarge,
    Rejected(String),
}

impl Sender {
    /// Delivers batches until the batcher closes the channel.
    pub async fn run(self, mut input: mpsc::Receiver<Box<Batch>>) {
        let this = Arc::new(self);
        let lines = Limit::per_second(u64::from(this.options.lines_per_sec));
        let bytes = Limit::per_second(this.options.bytes_per_sec);
        // Batches in flight for this file, oldest first. Several may be in flight so that
        // one slow acknowledgement (a long fsync) does not stall the file; checkpoints
        // still move strictly in order, as each oldest batch completes.
        // Each keeps its body: a delivery task that panics (a bug below `send`) is not an
        // acknowledgement, and its batch is delivered again.
        let mut in_flight: VecDeque<(tokio::task::JoinHandle<()>, Batch, Arc<Vec<u8>>)> =
            VecDeque::new();
        let mut open = true;
        while open || !in_flight.is_empty() {
            // A batch ending in a partial line goes alone: the next batch sends that line
            // again, complete, under the same number, and were both in flight the partial
            // one could be stored last (a retry landing late, or both in one request) and
            // replace the complete line for good.
            let after_partial = in_flight.back().is_some_and(|(_, b, _)| b.partial_last);
            let window = if this.env.sink().places_by_number() && !after_partial {
                WINDOW
            } else {
                1
            };
            tokio::select! {
                biased;
                done = async {
                    match in_flight.front_mut() {
                        Some((handle, _, _)) => handle.await,
                        None => std::future::pending().await,
                    }
                }, if !in_flight.is_empty() => match done {
                    Ok(()) => {
                        if let Some((_, batch, _)) = in_flight.pop_front() {
                            let next = in_flight.front().map(|(_, b, _)| b.read_at);
                            this.acknowledged(batch, next);
                        }
                    }
                    Err(e) if e.is_panic() => {
                        tracing::error!(file = %this.file, error = %e, "delivery task panicked (a bug); delivering the batch again");
                        if let Some((handle, batch, body)) = in_flight.front_mut() {
                            *handle = this.spawn_delivery(body.clone(), batch.read_at_ms, true);
                        }
                    }
                    // Cancelled: the runtime is shutting down. The checkpoint stays before
                    // the batch, which is sent again after a restart.
                    Err(_) => return,
                },
                next = input.recv(), if open && in_flight.len() < window => match next {
                    Some(mut batch) => {
                        tracing::trace!(file = %this.file, first = batch.first_line, lines = batch.lines, "sending batch");
                        lines.take(u64::from(batch.lines)).await;
                        bytes.take(batch.bytes).await;
                        let global = this.env.global();
                        global.0.take(u64::from(batch.lines)).await;
                        global.1.take(batch.bytes).await;
                        let body = Arc::new(std::mem::take(&mut batch.body));
                        let handle = this.spawn_delivery(body.clone(), batch.read_at_ms, false);
                        this.env.metrics.batch_out(&this.file, batch.read_at);
                        in_flight.push_back((handle, *batch, body));
                    }
                    None => open = false,
                },
            }
        }
        // A file dropped from the config by a reload keeps its checkpoint: if it comes back,
        // it resumes where it stopped.
        if this.ctl.finished.load(Ordering::SeqCst) && !this.ctl.unwatched.load(Ordering::SeqCst) {
            tracing::info!(file = %this.file, "rotated file drained and acknowledged");
            if let Some(id) = this.id {
                this.env.checkpoints.remove(id);
            }
        }
    }

    /// Delivers `body` on a task of its own (after `retry_max` when it is delivered again).
    fn spawn_delivery(
        self: &Arc<Self>,
        body: Arc<Vec<u8>>,
        read_at_ms: u64,
        again: bool,
    ) -> tokio::task::JoinHandle<()> {
        let task = self.clone();
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            if again {
                tokio::time::sleep(task.options.retry_max).await;
            }
            let mut backoff = Backoff::new(task.options.retry_initial, task.options.retry_max);
            task.deliver(body, read_at_ms, &mut backoff).await;
        }))
    }

    /// Moves the checkpoint past an acknowledged batch and releases its budget; `next` is
    /// when the oldest batch still out was read (the file's lag).
    fn acknowledged(&self, batch: Batch, next: Option<std::time::Instant>) {
        self.env
            .metrics
            .acked_to(&self.file, batch.end_offset, next);
        if let Some(f) = &self.on_ack {
            f(batch.end_line);
        }
        if let Some(id) = self.id {
            self.env.checkpoints.ack(Checkpoint {
                file: self.file.to_string(),
                id,
                generation: batch.generation.to_string(),
                offset: batch.end_offset,
                line: batch.end_line,
            });
        }
        self.env
            .metrics
            .acked(&self.file, u64::from(batch.lines), batch.bytes);
        drop(batch.permit);
    }

    /// Delivers a body, splitting on 413 and dead-lettering what is refused.
    async fn deliver(&self, body: Arc<Vec<u8>>, read_at_ms: u64, backoff: &mut Backoff) {
        let mut d = Delivering {
            sender: self,
            backoff,
            read_at_ms,
        };
        let Ok(()) = crate::delivery::split_on_too_large(body, &mut d).await;
    }

    /// Waits out a backoff delay, unless a reload swaps the sink first: then the next attempt
    /// goes at once, with the backoff started over.
    async fn wait(
        &self,
        swaps: &mut tokio::sync::watch::Receiver<u64>,
        delay: std::time::Duration,
        backoff: &mut Backoff,
    ) {
        if CurrentSink::sleep(swaps, delay).await {
            tracing::info!(file = %self.file, attempts = backoff.attempts(), "sink reconfigured; retrying now");
            backoff.reset();
        }
    }

    async fn attempt_until_answered(
        &self,
        body: &Arc<Vec<u8>>,
        read_at_ms: u64,
        backoff: &mut Backoff,
    ) -> Delivery {
        let mut parked = Holding::default();
        // A reload that swaps the sink ends the wait below: the fix is tried at once.
        let mut swaps = self.env.sink.watch();
        loop {
            let outcome = self
                .env
                .sink()
                .deliver(body, read_at_ms, &self.env.in_flight)
                .await;
            match outcome {
                Outcome::Ok => {
                    if backoff.attempts() > 0 {
                        tracing::info!(file = %self.file, attempts = backoff.attempts(), "delivered after retries");
                    }
                    backoff.reset();
                    return Delivery::Done;
                }
                Outcome::TooLarge => return Delivery::TooLarge,
                Outcome::Reject { reason } => return Delivery::Rejected(reason),
                Outcome::Park { endpoint, reason } => {
                    parked.up(&self.env.metrics.parked);
                    let delay = backoff.next(None);
                    if self.env.park_log.due(endpoint.clone()) {
                        tracing::error!(
                            %endpoint,
                            file = %self.file,
                            %reason,
                            "the sink refuses batches for a reason that is not theirs (token, URL?); files wait, nothing is dropped, retrying until the config is fixed"
                        );
                    }
                    self.wait(&mut swaps, delay, backoff).await;
                }
                Outcome::Retry { reason, after } => {
                    self.env.metrics.retries.inc();
                    let delay = backoff.next(after);
                    let n = backoff.attempts();
                    // First failure and then every tenth: enough to see, not a flood.
                    if n == 1 || n.is_multiple_of(10) {
                        tracing::warn!(file = %self.file, attempt = n, %reason, ?delay, "delivery failed; retrying");
                    }
                    self.wait(&mut swaps, delay, backoff).await;
                }
            }
        }
    }
}

/// Counts a file in a gauge (`agent_parked_files`, `agent_dead_letter_waiting_files`) from
/// its first failed attempt until the guard is dropped.
#[derive(Default)]
struct Holding(Option<prometheus_client::metrics::gauge::Gauge>);

impl Holding {
    fn up(&mut self, gauge: &prometheus_client::metrics::gauge::Gauge) {
        if self.0.is_none() {
            gauge.inc();
            self.0 = Some(gauge.clone());
        }
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

impl Sender {
    /// Keeps a refused batch for the operator (`agent dead-letters list|replay`) and moves on.
    /// Until it is kept (a full disk, or the directory at `limits.max_dead_letter_bytes`: an
    /// endpoint that refuses everything, say an aggregator older than the agent, would
    /// otherwise copy every log into it), the file waits, its checkpoint before the batch: a
    /// batch dropped there would be lost. The writes and fsyncs run on a blocking thread.
    async fn dead_letter(&self, body: &Arc<Vec<u8>>, reason: &str, backoff: &mut Backoff) {
        self.env.metrics.dead_letters.inc();
        let mut waiting = Holding::default();
        loop {
            let (letters, letter, why) = (
                self.env.dead_letters.clone(),
                body.clone(),
                reason.to_owned(),
            );
            let kept = tokio::task::spawn_blocking(move || letters.keep(&letter, &why))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            match kept {
                Ok(path) => {
                    drop(waiting);
                    tracing::error!(file = %self.file, %reason, dead_letter = %path.display(), "batch refused; kept in the dead-letter directory (agent dead-letters replay sends it again)");
                    backoff.reset();
                    return;
                }
                Err(e) => {
                    let delay = backoff.next(None);
                    waiting.up(&self.env.metrics.dead_letters_waiting);
                    if self.env.park_log.due("dead-letter".to_owned()) {
                        tracing::error!(file = %self.file, %reason, error = %e, "batches refused and not kept in the dead-letter directory; their files wait until they can be (replay or remove dead letters, or fix the endpoint)");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// The sender's way of delivering: retry until the sink answers; a refused piece or a line
/// too large for the sink becomes a dead letter. Never fails.
struct Delivering<'a> {
    sender: &'a Sender,
    backoff: &'a mut Backoff,
    /// When the batch's first line was read (ms since the epoch).
    read_at_ms: u64,
}

impl crate::delivery::Deliver for Delivering<'_> {
    type Error = std::convert::Infallible;

    async fn attempt(&mut self, piece: &Arc<Vec<u8>>) -> crate::delivery::Step<Self::Error> {
        use crate::delivery::Step;
        match self
            .sender
            .attempt_until_answered(piece, self.read_at_ms, self.backoff)
            .await
        {
            Delivery::Done => Step::Done,
            Delivery::TooLarge => {
                tracing::info!(file = %self.sender.file, "batch too large for the sink; splitting");
                Step::TooLarge
            }
            Delivery::Rejected(reason) => {
                self.sender.dead_letter(piece, &reason, self.backoff).await;
                Step::Done
            }
        }
    }

    async fn unsplittable(&mut self, piece: &Arc<Vec<u8>>) -> Result<(), Self::Error> {
        self.sender
            .dead_letter(
                piece,
                "a single line is larger than the sink accepts (413)",
                self.backoff,
            )
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_slice_amounts_above_the_burst() {
        // governor keeps its own clock, so this runs in real time, kept short.
        let l = Limit::per_second(1000);
        let t = std::time::Instant::now();
        l.take(1000).await; // the burst passes at once
        l.take(1300).await; // more than a second's quota must wait ~1.3 s
        assert!(
            t.elapsed() >= std::time::Duration::from_millis(1200),
            "{:?}",
            t.elapsed()
        );
    }

    /// A sink whose first delivery panics (a bug anywhere under `send`), then acknowledges.
    struct PanicsOnce(std::sync::atomic::AtomicU32);

    impl Sink for PanicsOnce {
        fn send<'a>(&'a self, _body: &'a [u8]) -> crate::sink::BoxFuture<'a, Outcome> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                assert!(n > 0, "the first delivery panics (on purpose)");
                Outcome::Ok
            })
        }
    }

    /// A sender of file `/f` (identity 1/2) to `sink`, keeping its state in `dir`.
    fn sender_to(sink: Arc<dyn Sink>, dir: &std::path::Path, max_dead_letter_bytes: u64) -> Sender {
        let env = Arc::new(SendEnv {
            sink: Arc::new(CurrentSink::new(sink)),
            checkpoints: Arc::new(Checkpoints::open(dir).expect("checkpoints")),
            metrics: Arc::new(Metrics::default()),
            in_flight: Arc::new(Semaphore::new(4)),
            global: std::sync::RwLock::new(Arc::new((Limit::per_second(0), Limit::per_second(0)))),
            dead_letters: Arc::new(crate::dead_letter::DeadLetters::new(
                dir.join("dead-letter"),
                max_dead_letter_bytes,
            )),
            park_log: ParkLog::default(),
        });
        let options = PipelineOptions {
            batch_lines: 100,
            batch_bytes: 1 << 20,
            linger: std::time::Duration::from_millis(10),
            read_from: crate::config::ReadFrom::Beginning,
            max_line_bytes: 1024,
            partial_line_timeout: std::time::Duration::from_secs(1),
            close_inactive: std::time::Duration::from_secs(60),
            rotate_wait: std::time::Duration::from_secs(1),
            lines_per_sec: 0,
            bytes_per_sec: 0,
            retry_initial: std::time::Duration::from_millis(1),
            retry_max: std::time::Duration::from_millis(5),
            multiline: None,
        };
        Sender {
            env,
            file: Arc::from("/f"),
            id: Some(FileId { dev: 1, ino: 2 }),
            on_ack: None,
            options: Arc::new(options),
            ctl: Arc::new(Control::default()),
        }
    }

    /// A channel holding one batch of one line (ending at offset 7, line 1), then closed.
    async fn one_batch() -> mpsc::Receiver<Box<Batch>> {
        let mut w = logship_wire::compact::Writer::new("h", "/f", "g", 0);
        w.push(b"a line", false);
        let batch = Batch {
            body: w.finish(),
            generation: Arc::from("g"),
            first_line: 0,
            lines: 1,
            bytes: 6,
            end_offset: 7,
            end_line: 1,
            permit: None,
            read_at: std::time::Instant::now(),
            read_at_ms: 0,
            partial_last: false,
        };
        let (tx, rx) = mpsc::channel(1);
        tx.send(Box::new(batch)).await.expect("send");
        rx
    }

    #[tokio::test]
    async fn a_delivery_that_panics_is_retried_not_taken_for_an_acknowledgement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = Arc::new(PanicsOnce(std::sync::atomic::AtomicU32::new(0)));
        let sender = sender_to(sink.clone(), dir.path(), u64::MAX);
        let env = sender.env.clone();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            sender.run(one_batch().await),
        )
        .await
        .expect("the sender finishes");
        assert_eq!(
            sink.0.load(Ordering::SeqCst),
            2,
            "delivered again after the panic"
        );
        let cp = env
            .checkpoints
            .get(FileId { dev: 1, ino: 2 })
            .expect("checkpoint after the acknowledgement");
        assert_eq!((cp.offset, cp.line), (7, 1));
    }

    /// A sink whose first attempt fails (slowly) and that records, in order, the bodies it
    /// acknowledged.
    #[derive(Default)]
    struct FirstFails {
        attempts: std::sync::atomic::AtomicU32,
        stored: std::sync::Mutex<Vec<Vec<u8>>>,
    }

    impl Sink for FirstFails {
        fn send<'a>(&'a self, body: &'a [u8]) -> crate::sink::BoxFuture<'a, Outcome> {
            let n = self.attempts.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if n == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    return Outcome::Retry {
                        reason: "503".into(),
                        after: None,
                    };
                }
                self.stored.lock().expect("lock").push(body.to_vec());
                Outcome::Ok
            })
        }
    }

    /// A batch ending in a partial line, then the batch completing that line: the complete
    /// line must be stored last, even when the first batch needs a retry (with both in
    /// flight, the retry of the partial line landed after its completion and replaced it).
    #[tokio::test]
    async fn a_partial_line_is_never_stored_after_its_completion() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = Arc::new(FirstFails::default());
        let sender = sender_to(sink.clone(), dir.path(), u64::MAX);
        let batch = |content: &[u8], partial: bool, end_offset: u64, end_line: u64| {
            let mut w = logship_wire::compact::Writer::new("h", "/f", "g", 0);
            w.push(content, partial);
            Box::new(Batch {
                body: w.finish(),
                generation: Arc::from("g"),
                first_line: 0,
                lines: 1,
                bytes: content.len() as u64,
                end_offset,
                end_line,
                permit: None,
                read_at: std::time::Instant::now(),
                read_at_ms: 0,
                partial_last: partial,
            })
        };
        let (tx, rx) = mpsc::channel(4);
        tx.send(batch(b"half", true, 0, 0)).await.expect("send");
        tx.send(batch(b"half and whole", false, 15, 1))
            .await
            .expect("send");
        drop(tx);
        tokio::time::timeout(std::time::Duration::from_secs(10), sender.run(rx))
            .await
            .expect("the sender finishes");
        let stored = sink.stored.lock().expect("lock").clone();
        let last = stored.last().expect("stored");
        let line = logship_wire::decode_file(last).expect("decodes");
        assert_eq!(
            (&line.lines[0].content[..], line.lines[0].partial),
            (&b"half and whole"[..], false),
            "the complete line was stored last"
        );
    }

    /// A sink that refuses every batch as malformed (400).
    struct Refuses;

    impl Sink for Refuses {
        fn send<'a>(&'a self, _body: &'a [u8]) -> crate::sink::BoxFuture<'a, Outcome> {
            Box::pin(async {
                Outcome::Reject {
                    reason: "400 malformed".into(),
                }
            })
        }
    }

    /// Runs `sender` on one batch that is refused; returns once it waits because the batch
    /// cannot be kept (`agent_dead_letter_waiting_files`), having checked that the checkpoint
    /// has not moved.
    async fn refused_and_waiting(sender: Sender) -> (Arc<SendEnv>, tokio::task::JoinHandle<()>) {
        let env = sender.env.clone();
        let run = tokio::spawn(sender.run(one_batch().await));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while env.metrics.dead_letters_waiting.get() < 1 {
            assert!(std::time::Instant::now() < deadline, "never waited");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            env.checkpoints.get(FileId { dev: 1, ino: 2 }).is_none(),
            "the checkpoint waits while the batch cannot be kept"
        );
        assert!(!run.is_finished());
        (env, run)
    }

    /// Waits for `run` to end; checks the dead-letter directory then holds `letters` files
    /// and the checkpoint is past the batch.
    async fn kept_and_done(env: &SendEnv, run: tokio::task::JoinHandle<()>, letters: usize) {
        tokio::time::timeout(std::time::Duration::from_secs(10), run)
            .await
            .expect("the sender finishes")
            .expect("no panic");
        let kept = std::fs::read_dir(env.dead_letters.dir())
            .expect("the batch is kept")
            .count();
        assert_eq!(kept, letters);
        assert_eq!(
            env.metrics.dead_letters_waiting.get(),
            0,
            "no longer waiting"
        );
        let cp = env
            .checkpoints
            .get(FileId { dev: 1, ino: 2 })
            .expect("checkpoint once kept");
        assert_eq!((cp.offset, cp.line), (7, 1));
    }

    #[tokio::test]
    async fn a_refused_batch_that_cannot_be_kept_waits_until_it_can() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A file where the dead-letter directory must be: it cannot be created (as when the
        // disk is full).
        std::fs::write(dir.path().join("dead-letter"), b"in the way").expect("write");
        let (env, run) =
            refused_and_waiting(sender_to(Arc::new(Refuses), dir.path(), u64::MAX)).await;
        std::fs::remove_file(dir.path().join("dead-letter")).expect("room again");
        kept_and_done(&env, run, 2).await; // the body and its reason
    }

    #[tokio::test]
    async fn refused_batches_wait_rather_than_fill_the_dead_letter_directory_past_its_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dead = dir.path().join("dead-letter");
        std::fs::create_dir_all(&dead).expect("mkdir");
        // Earlier dead letters already take the directory's whole allowance. Without the
        // limit the sender would have written its letter and moved the checkpoint at once.
        std::fs::write(dead.join("earlier.lsb"), vec![b'x'; 4096]).expect("write");
        let (env, run) = refused_and_waiting(sender_to(Arc::new(Refuses), dir.path(), 4096)).await;
        assert_eq!(std::fs::read_dir(&dead).expect("dir").count(), 1);
        // The operator replays or removes the earlier dead letters: room again.
        std::fs::remove_file(dead.join("earlier.lsb")).expect("remove");
        kept_and_done(&env, run, 2).await;
    }
}
