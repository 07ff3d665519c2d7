//! The `stdin` source: standard input as one stream (`agent --config x.toml < file`, or a
//! pipe), stored as host + `name` (default `stdin`).
//!
//! Standard input cannot be read again, so it has no checkpoint: each run is a generation of
//! its own (`stdin-<ms>-<pid>`, lines numbered from 0), and a line is safe once acknowledged.
//! After end of input the agent exits once everything is acknowledged (when every source is
//! stdin), with a non-zero code if anything could not be delivered (see `crate::run`).
//! Reading runs on a thread of its own (a blocking read of a pipe or terminal), handing
//! blocks to the batcher through a channel of two: when the sink is slow, the budget fills,
//! the batcher waits, and the reader stops reading — the writer of the pipe waits too.

use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::Source;
use crate::batcher::{wall_ms, Batcher, Chunk};
use crate::config::SourceSettings;
use crate::pipeline::Pipelines;
use crate::sender::Sender;
use crate::tailer::Control;

/// Bytes read from standard input at a time.
const READ_BYTES: usize = 64 * 1024;

pub struct StdinSource {
    settings: SourceSettings,
}

impl StdinSource {
    pub fn new(mut sources: Vec<SourceSettings>) -> anyhow::Result<Self> {
        let settings = sources
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no stdin source"))?;
        anyhow::ensure!(sources.is_empty(), "one stdin source at most");
        Ok(StdinSource { settings })
    }
}

impl Source for StdinSource {
    fn run(self: Box<Self>, pipes: Pipelines) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move { self.ship(vec![pipes]).await })
    }

    fn read_once(&self) -> bool {
        true
    }

    fn run_for_every_sink(
        self: Box<Self>,
        all: Vec<Pipelines>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move { self.ship(all).await })
    }
}

impl StdinSource {
    /// Reads standard input once and hands every block to a batcher of each sink's lane.
    /// With several sinks it goes at the pace of the slowest: the input cannot be read
    /// again, and memory stays within each lane's budget.
    async fn ship(self, lanes: Vec<Pipelines>) {
        let Some(first) = lanes.first() else { return };
        let name: Arc<str> = Arc::from(self.settings.name.as_deref().unwrap_or("stdin"));
        let options = self.settings.options.clone();
        let generation: Arc<str> = Arc::from(format!("stdin-{}-{}", wall_ms(), std::process::id()));
        let mut batchers = Vec::with_capacity(lanes.len());
        let mut sending = Vec::with_capacity(lanes.len());
        for pipes in &lanes {
            let (batch_tx, batch_rx) = mpsc::channel(1);
            batchers.push(Batcher::new(
                pipes.host.clone(),
                name.clone(),
                options.clone(),
                pipes.budget.clone(),
                batch_tx,
            ));
            let sender = Sender {
                env: pipes.send.clone(),
                file: name.clone(),
                id: None,
                on_ack: None,
                options: options.clone(),
                ctl: Arc::new(Control::default()),
            };
            let (metrics, name, done) = (pipes.metrics.clone(), name.clone(), pipes.done.clone());
            metrics.files_tracked.inc();
            metrics.attach(&name);
            sending.push(tokio::spawn(async move {
                sender.run(batch_rx).await;
                metrics.files_tracked.dec();
                metrics.detach(&name);
                drop(done);
            }));
        }
        tracing::info!(file = %name, %generation, sinks = lanes.len(), "reading standard input");
        let mut blocks = read_on_own_thread();
        let mut lines = Lines::new(generation, options.max_line_bytes);
        let mut shutdown = first.shutdown.clone();
        let mut stopped = false;
        let mut gone = false;
        while !gone {
            let due = batchers.iter().filter_map(Batcher::deadline).min();
            let linger = async {
                match due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                block = blocks.recv() => match block {
                    Some(block) => {
                        for pipes in &lanes {
                            pipes.metrics.bytes_read(&name, block.len() as u64);
                        }
                        gone = add_to_each(&mut batchers, lines.split(&block)).await;
                    }
                    None => {
                        if let Some(last) = lines.finish() {
                            let _ = add_to_each(&mut batchers, last).await;
                        }
                        tracing::info!(file = %name, lines = lines.next, "end of standard input; waiting for the acknowledgements");
                        break;
                    }
                },
                () = linger => {
                    let now = tokio::time::Instant::now();
                    for b in &mut batchers {
                        gone |= b.seal_if_due(now).await.is_err();
                    }
                }
                _ = shutdown.changed() => {
                    stopped = true;
                    break;
                }
            }
        }
        for b in &mut batchers {
            let _ = b.seal().await;
        }
        drop(batchers);
        if stopped {
            // The agent's drain waits for the senders (up to `shutdown_timeout`).
            return;
        }
        tokio::select! {
            _ = futures_util::future::join_all(sending) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Hands `chunk` to every batcher (a copy each but the last); true when one is gone (its
/// sender ended), which ends the reading.
async fn add_to_each(batchers: &mut [Batcher], chunk: Chunk) -> bool {
    let Some((last, others)) = batchers.split_last_mut() else {
        return true;
    };
    let mut gone = false;
    for b in others {
        gone |= b.add(chunk.clone()).await.is_err();
    }
    gone | last.add(chunk).await.is_err()
}

/// Reads standard input on a thread of its own, a block at a time; the channel closes at
/// end of input (or on a read error, which is logged).
fn read_on_own_thread() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(2);
    let spawned = std::thread::Builder::new()
        .name("logship-stdin".into())
        .spawn(move || {
            let mut input = std::io::stdin().lock();
            loop {
                let mut buf = vec![0u8; READ_BYTES];
                match input.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(buf).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::error!(error = %e, "reading standard input failed; treating it as its end");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the standard input reader");
    }
    rx
}

/// Splits a byte stream into numbered lines: complete ones as they come, a last line
/// without `\n` at the end of input (shipped partial, so the stored stream is byte-exact),
/// lines over `max_line_bytes` truncated (as the file source does).
struct Lines {
    generation: Arc<str>,
    max: usize,
    /// The line being read.
    pending: Vec<u8>,
    /// The line being read is over `max` (what follows it until `\n` is dropped).
    truncated: bool,
    /// Number of the line being read.
    next: u64,
    /// Bytes of input before the line being read.
    offset: u64,
    /// Bytes of the line being read so far (kept or not).
    line_len: u64,
}

impl Lines {
    fn new(generation: Arc<str>, max: usize) -> Self {
        Lines {
            generation,
            max,
            pending: Vec::new(),
            truncated: false,
            next: 0,
            offset: 0,
            line_len: 0,
        }
    }

    /// The complete lines `block` ends, as a chunk.
    fn split(&mut self, mut block: &[u8]) -> Chunk {
        let mut chunk = Chunk::new(self.generation.clone(), self.next);
        while !block.is_empty() {
            let (part, complete) = match memchr::memchr(b'\n', block) {
                Some(i) => (&block[..i], true),
                None => (block, false),
            };
            let room = self.max.saturating_sub(self.pending.len());
            if part.len() > room {
                self.truncated = true;
            }
            self.pending
                .extend_from_slice(&part[..part.len().min(room)]);
            self.line_len += part.len() as u64;
            block = &block[(part.len() + usize::from(complete)).min(block.len())..];
            if complete {
                self.offset += self.line_len + 1;
                chunk.data.extend_from_slice(&self.pending);
                chunk.data.push(b'\n');
                chunk.ends.push(self.offset);
                self.pending.clear();
                self.truncated = false;
                self.line_len = 0;
                self.next += 1;
            }
        }
        chunk
    }

    /// At end of input: the last line, if it has no `\n`, as a partial line.
    fn finish(&mut self) -> Option<Chunk> {
        if self.pending.is_empty() && !self.truncated {
            return None;
        }
        let mut chunk = Chunk::new(self.generation.clone(), self.next);
        chunk.data = std::mem::take(&mut self.pending);
        chunk.partial = Some(self.offset);
        self.next += 1;
        Some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(c: &Chunk) -> (u64, Vec<u8>, Vec<u64>, Option<u64>) {
        (c.first_line, c.data.clone(), c.ends.clone(), c.partial)
    }

    #[test]
    fn lines_across_blocks_keep_their_numbers_and_a_last_line_is_partial() {
        let mut l = Lines::new(Arc::from("g"), 1024);
        assert_eq!(
            shape(&l.split(b"one\ntw")),
            (0, b"one\n".to_vec(), vec![4], None)
        );
        assert_eq!(
            shape(&l.split(b"o\n\nthree")),
            (1, b"two\n\n".to_vec(), vec![8, 9], None)
        );
        assert_eq!(
            shape(&l.finish().expect("a last line")),
            (3, b"three".to_vec(), vec![], Some(9))
        );
        assert!(l.finish().is_none());
    }

    #[test]
    fn a_long_line_is_truncated_not_split() {
        let mut l = Lines::new(Arc::from("g"), 4);
        let c = l.split(b"abcdefgh");
        assert_eq!(c.count(), 0);
        let c = l.split(b"ij\nxy\n");
        assert_eq!(shape(&c), (0, b"abcd\nxy\n".to_vec(), vec![11, 14], None));
    }
}
