//! One file's pipeline: tailer → batcher → sender, two tasks (the batcher runs inside the
//! tailer's) joined by a bounded channel.
//! Sources call [`Pipelines::start`] for each file they find.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use crate::batcher::{Batcher, Budget};
use crate::checkpoint::{Checkpoints, FileId};
use crate::config::PipelineOptions;
use crate::metrics::Metrics;
use crate::sender::{SendEnv, Sender};
use crate::tailer::{Control, Start, Tailer, TailerEnv};

/// Sealed batches queued between a batcher and its sender (besides those in flight).
const BATCH_QUEUE: usize = 1;

/// Everything a source needs to start pipelines.
#[derive(Debug, Clone)]
pub struct Pipelines {
    pub host: Arc<str>,
    pub send: Arc<SendEnv>,
    pub metrics: Arc<Metrics>,
    pub checkpoints: Arc<Checkpoints>,
    pub budget: Budget,
    /// Descriptor budget across all tailers.
    pub open_files: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
    /// Each pipeline holds a clone; the agent knows all are done when the channel closes.
    pub done: mpsc::Sender<()>,
    /// Every source as the configuration now says (a SIGHUP reload sends a new list).
    pub reloaded: watch::Receiver<Arc<Vec<crate::config::SourceSettings>>>,
}

impl Pipelines {
    /// Starts the three tasks for an open file. `rotated` starts it draining (a file found
    /// renamed away while the agent was stopped).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &self,
        name: String,
        path: PathBuf,
        file: File,
        permit: OwnedSemaphorePermit,
        id: FileId,
        start: Start,
        options: &Arc<PipelineOptions>,
        rotated: bool,
    ) -> std::io::Result<Arc<Control>> {
        let ctl = Arc::new(Control::default());
        ctl.rotated.store(rotated, Ordering::SeqCst);
        let env = TailerEnv {
            options: options.clone(),
            metrics: self.metrics.clone(),
            open_files: self.open_files.clone(),
            shutdown: self.shutdown.clone(),
        };
        let own_thread = crate::open_file::reads_may_hang(&file);
        let make = {
            let (name, ctl) = (name.clone(), ctl.clone());
            move || Tailer::new(path, name, file, permit, id, start, env, ctl)
        };
        // Built here for a local file (its errors are the caller's), on its thread otherwise.
        let runner = if own_thread { Err(make) } else { Ok(make()?) };
        let (batch_tx, batch_rx) = mpsc::channel(BATCH_QUEUE);
        let file: Arc<str> = Arc::from(name);
        let file_label = file.clone();
        let batcher = Batcher::new(
            self.host.clone(),
            file.clone(),
            options.clone(),
            self.budget.clone(),
            batch_tx,
        );
        match runner {
            Ok(tailer) => {
                tokio::spawn(tailer.run(batcher).in_current_span());
            }
            Err(make) => self.read_on_own_thread(&file, make, batcher)?,
        }
        let sender = Sender {
            env: self.send.clone(),
            file,
            id: Some(id),
            on_ack: None,
            options: options.clone(),
            ctl: ctl.clone(),
        };
        let done = self.done.clone();
        let metrics = self.metrics.clone();
        let ctl2 = ctl.clone();
        metrics.files_tracked.inc();
        metrics.attach(&file_label);
        let sending = async move {
            sender.run(batch_rx).await;
            metrics.files_tracked.dec();
            metrics.detach(&file_label);
            ctl2.exited.store(true, Ordering::SeqCst);
            drop(done);
        };
        // In the source's span: with several sinks, the sink's name is on every log line.
        tokio::spawn(sending.in_current_span());
        Ok(ctl)
    }

    /// Runs a tailer whose reads may hang (a network or user-space filesystem) on a thread
    /// of its own, with a runtime of its own: a read that never returns then holds that
    /// thread, while every other file keeps the async workers (issue 29.10: a hung NFS read
    /// held a tokio worker, and two of them stopped every pipeline on a 2-core host). Its
    /// batches reach the sender through the same channel; timers and notifications work
    /// across runtimes.
    fn read_on_own_thread(
        &self,
        name: &str,
        make: impl FnOnce() -> std::io::Result<Tailer> + Send + 'static,
        batcher: Batcher,
    ) -> std::io::Result<()> {
        let threads = self.metrics.files_on_own_thread.clone();
        let name = name.to_owned();
        std::thread::Builder::new()
            .name("logship-read".into())
            .spawn(move || {
                threads.inc();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build();
                match runtime {
                    Ok(rt) => rt.block_on(async move {
                        match make() {
                            Ok(tailer) => {
                                tailer.run(batcher).await;
                            }
                            Err(e) => {
                                tracing::warn!(file = %name, error = %e, "cannot start tailing");
                            }
                        }
                    }),
                    Err(e) => {
                        tracing::error!(file = %name, error = %e, "cannot start a reader thread")
                    }
                }
                threads.dec();
            })
            .map(|_| ())
    }
}
