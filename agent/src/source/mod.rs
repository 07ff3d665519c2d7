//! Sources: where lines come from. A source finds its streams and starts one pipeline per
//! stream through [`Pipelines`]; it runs until the agent stops.
//!
//! Adding a source: one file implementing [`Source`], one line in [`build`] and in
//! [`crate::config::SOURCE_KINDS`].

mod file;
mod journald;
mod stdin;

use std::future::Future;
use std::pin::Pin;

use crate::config::{Settings, SourceSettings};
use crate::pipeline::Pipelines;

/// A running source.
pub trait Source: Send + 'static {
    /// Finds streams and starts their pipelines until `pipelines.shutdown` turns true.
    fn run(self: Box<Self>, pipelines: Pipelines) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// Whether the source can be read only once (standard input): then it runs once, with
    /// [`run_for_every_sink`](Source::run_for_every_sink), instead of once per sink.
    fn read_once(&self) -> bool {
        false
    }

    /// Runs with every sink's pipelines at once, giving each every line.
    fn run_for_every_sink(
        self: Box<Self>,
        all: Vec<Pipelines>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        match all.into_iter().next() {
            Some(first) => self.run(first),
            None => Box::pin(async {}),
        }
    }
}

/// Builds one source of kind `kind` from every `[[sources]]` entry of that kind.
pub fn build(
    kind: &str,
    sources: Vec<SourceSettings>,
    settings: &Settings,
) -> anyhow::Result<Box<dyn Source>> {
    Ok(match kind {
        "file" => Box::new(file::FileSource::new(
            sources,
            settings.poll_interval,
            file::Tracking {
                max_files: settings.max_tracked_files,
                forget_after: settings.forget_after,
            },
        )),
        "stdin" => Box::new(stdin::StdinSource::new(sources)?),
        "journald" => Box::new(journald::JournaldSource::new(sources, settings)?),
        other => anyhow::bail!("unknown source type {other:?}"),
    })
}

pub use file::{expand, expand_reporting, Expanded};
