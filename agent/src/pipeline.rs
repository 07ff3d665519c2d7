//! One file's pipeline: tailer → batcher → sender, two tasks (the batcher runs inside the
//! tailer's) joined by a bounded channel.
//! Sources call [`Pipelines::start`] for each file they find.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

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
        let tailer = Tailer::new(
            path,
            name.clone(),
            file,
            permit,
            id,
            start,
            env,
            ctl.clone(),
        )?;
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
        tokio::spawn(tailer.run(batcher));
        let sender = Sender {
            env: self.send.clone(),
            file,
            id,
            options: options.clone(),
            ctl: ctl.clone(),
        };
        let done = self.done.clone();
        let metrics = self.metrics.clone();
        let ctl2 = ctl.clone();
        metrics.files_tracked.inc();
        metrics.attach(&file_label);
        tokio::spawn(async move {
            sender.run(batch_rx).await;
            metrics.files_tracked.dec();
            metrics.detach(&file_label);
            ctl2.exited.store(true, Ordering::SeqCst);
            drop(done);
        });
        Ok(ctl)
    }
}
