//! The agent: tails many log files and ships them to the aggregator without losing or
//! duplicating a line.
//!
//! - [`config`]: TOML/env/flag configuration, validated into [`config::Settings`];
//! - [`source`]: sources (`file`: glob discovery with notify and polling);
//! - [`pipeline`]: one tailer → batcher → sender per file identity;
//! - [`tailer`], [`batcher`], [`sender`]: the three stages; [`buffers`]: read buffers lent
//!   per read turn;
//! - [`sink`]: sinks (`aggregator`, `loki`, `otlp` over HTTP, `stdout`);
//! - [`lanes`]: one lane per sink, so several sinks each ship every line at their own pace;
//! - [`checkpoint`]: acknowledged positions, saved atomically;
//! - [`dead_letter`]: refused batches kept, listed and replayed;
//! - [`generation`]: generation ids derived from the file itself;
//! - [`backoff`], [`metrics`]: retry delays and Prometheus metrics.

pub mod backoff;
pub mod batcher;
pub mod buffers;
pub mod checkpoint;
pub mod client_tls;
pub mod config;
pub mod dead_letter;
pub mod delivery;
pub mod generation;
pub mod lag;
pub mod lanes;
pub mod metrics;
pub mod open_file;
pub mod pipeline;
pub mod preflight;
pub mod reload;
pub mod sender;
pub mod sink;
pub mod source;
pub mod tailer;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::Instrument;

use batcher::Budget;
use checkpoint::Checkpoints;
use config::Settings;
use metrics::Metrics;
use pipeline::Pipelines;

/// Runs the agent until `shutdown` resolves, then drains: tailers stop reading, batchers
/// seal what was read, senders wait for acks up to `shutdown_timeout`, checkpoints are
/// written last.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
    reload_config: impl Fn() -> Result<Settings, config::ConfigError> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    metrics
        .config_info
        .in_force(None, &settings.fingerprint.hash());
    let lanes = (0..settings.sinks.len())
        .map(|i| lanes::Lane::open(&settings, i, &metrics))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (sources_tx, sources_rx) = watch::channel(Arc::new(settings.sources.clone()));
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let pipes: Vec<Pipelines> = lanes
        .iter()
        .map(|lane| Pipelines {
            host: Arc::from(settings.host.as_str()),
            send: lane.send.clone(),
            metrics: lane.metrics.clone(),
            checkpoints: lane.checkpoints.clone(),
            budget: lane.budget.clone(),
            open_files: Arc::new(Semaphore::new(lanes::open_files_share(&settings))),
            shutdown: stop_rx.clone(),
            done: done_tx.clone(),
            reloaded: sources_rx.clone(),
        })
        .collect();
    drop(done_tx);
    reload::on_sighup(
        settings.clone(),
        lanes
            .iter()
            .map(|l| (l.name.clone(), l.send.clone()))
            .collect(),
        sources_tx,
        reload_config,
    );
    // Only now, with SIGHUP handled, does the agent answer on its metrics address: a reload
    // sent as soon as it answers must not meet SIGHUP's default action (terminate).
    if let Some(addr) = settings.metrics_listen {
        let sinks = lanes
            .iter()
            .map(|l| (l.name.clone(), l.sink.clone()))
            .collect();
        metrics::serve(addr, metrics.clone(), sinks)
            .await
            .with_context(|| format!("binding metrics_listen {addr}"))?;
    }

    let all_checkpoints: Vec<Arc<Checkpoints>> =
        lanes.iter().map(|l| l.checkpoints.clone()).collect();
    let saver = {
        let (cps, m, every, dir) = (
            all_checkpoints.clone(),
            metrics.clone(),
            settings.checkpoint_interval,
            settings.state_dir.clone(),
        );
        let budgets: Vec<Budget> = lanes.iter().map(|l| l.budget.clone()).collect();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let cps2 = cps.clone();
                let saved =
                    tokio::task::spawn_blocking(move || cps2.iter().try_for_each(|c| c.save()))
                        .await;
                match saved {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(state_dir = %dir.display(), error = %e, "saving checkpoints failed")
                    }
                    Err(e) => {
                        tracing::error!(state_dir = %dir.display(), error = %e, "checkpoint task failed")
                    }
                }
                // The oldest save of any sink's checkpoints.
                let age = cps.iter().map(|c| c.age_secs()).fold(0.0, f64::max);
                let saved = std::time::SystemTime::now()
                    .checked_sub(std::time::Duration::from_secs_f64(age))
                    .unwrap_or(std::time::UNIX_EPOCH);
                m.checkpoint_time.set(
                    saved
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64()),
                );
                let used: u64 = budgets.iter().map(|b| b.used_kib() * 1024).sum();
                m.buffered_bytes
                    .set(i64::try_from(used).unwrap_or(i64::MAX));
                let _ = tokio::task::spawn_blocking(logship_common::trim_free_memory).await;
            }
        })
    };

    let mut by_kind: BTreeMap<String, Vec<config::SourceSettings>> = BTreeMap::new();
    for s in &settings.sources {
        by_kind.entry(s.kind.clone()).or_default().push(s.clone());
    }
    // Every sink's lane runs every source of its own, but a source that can be read only
    // once (stdin) runs once, feeding every lane. With several sinks, each lane's sources
    // run in a span naming the sink, so its pipelines' log lines say which sink they are
    // about.
    let mut sources = Vec::new();
    for (kind, list) in &by_kind {
        for (lane, lane_pipes) in lanes.iter().zip(&pipes) {
            let src = source::build(kind, list.clone(), &lane.source_settings(&settings))?;
            if src.read_once() {
                sources.push(tokio::spawn(src.run_for_every_sink(pipes.clone())));
                break;
            }
            let span = if lanes.len() > 1 {
                // At the error level, so that no log filter drops it from the lines it holds.
                tracing::error_span!("sink", sink = %lane.name)
            } else {
                tracing::Span::none()
            };
            sources.push(tokio::spawn(src.run(lane_pipes.clone()).instrument(span)));
        }
    }
    tracing::info!(host = %settings.host, files = source::expand(&settings.sources).len(), "agent running");

    // With only finite sources (stdin), the agent stops once they are done: at the end of
    // their input, everything acknowledged.
    let finite = settings.sources.iter().all(|s| s.kind == "stdin");
    let mut ended = false;
    if finite {
        tokio::select! {
            () = shutdown => {}
            _ = futures_util::future::join_all(sources.iter_mut()) => ended = true,
        }
    } else {
        shutdown.await;
    }
    let _ = stop_tx.send(true);
    if !ended {
        for s in sources {
            let _ = s.await;
        }
    }
    drop(pipes);
    tracing::info!(timeout = ?settings.shutdown_timeout, "draining: waiting for acknowledgements");
    match tokio::time::timeout(settings.shutdown_timeout, done_rx.recv()).await {
        Ok(_) => tracing::info!("all pipelines drained"),
        Err(_) => tracing::warn!(
            "shutdown deadline passed; unacknowledged lines will be resent on restart"
        ),
    }
    saver.abort();
    for c in &all_checkpoints {
        c.save().context("saving checkpoints at shutdown")?;
    }
    tracing::info!("checkpoints saved; bye");
    if finite {
        // Standard input cannot be read again: say (exit code 1) whether all of it was
        // delivered.
        let refused = metrics.dead_letters.get();
        if !ended {
            anyhow::bail!("stopped before the end of standard input was delivered");
        }
        if refused > 0 {
            anyhow::bail!("{refused} batch(es) of standard input were refused (kept as dead letters; `agent dead-letters list`)");
        }
    }
    Ok(())
}
