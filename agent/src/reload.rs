//! Configuration reload on SIGHUP, without losing or repeating a line.
//!
//! The file is re-read and validated first; a bad file is logged and the running
//! configuration stays. Then: each sink (URL, token, compression, timeout; matched by name) and the agent-wide
//! rate limits are swapped for every request from now on — batches parked on a refused token
//! go through with the new one; the new list of sources goes to discovery, which keeps the
//! pipeline (and position) of every file still shipped with the same options, drains the
//! pipelines of files no longer matched or whose options changed (their checkpoints stay;
//! a changed file restarts from its checkpoint once the old pipeline has ended), and starts
//! pipelines for newly matched files. Keys fixed at start are named in a warning.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{ConfigError, Settings, SourceSettings};
use crate::sender::{Limit, SendEnv};

/// Reloads on every SIGHUP.
pub fn on_sighup(
    running: Settings,
    send: Vec<(Arc<str>, Arc<SendEnv>)>,
    sources: watch::Sender<Arc<Vec<SourceSettings>>>,
    load: impl Fn() -> Result<Settings, ConfigError> + Send + 'static,
) {
    let mut running = running;
    logship_common::on_sighup(move || match load() {
        Ok(new) => {
            apply(&running, &new, &send, &sources);
            running = new;
        }
        Err(e) => {
            if let Some((_, send)) = send.first() {
                send.metrics.reload_failures.inc();
            }
            tracing::error!(error = %e, "config reload failed; the running configuration stays")
        }
    });
}

fn apply(
    old: &Settings,
    new: &Settings,
    lanes: &[(Arc<str>, Arc<SendEnv>)],
    sources: &watch::Sender<Arc<Vec<SourceSettings>>>,
) {
    macro_rules! restart_only {
        ($($field:ident => $key:literal),* $(,)?) => {$(
            if new.$field != old.$field {
                tracing::warn!(key = $key, "changed in the config file; takes effect after a restart");
            }
        )*};
    }
    restart_only!(
        host => "host",
        state_dir => "state_dir",
        metrics_listen => "metrics_listen",
        max_in_flight => "limits.max_in_flight",
        max_buffered_bytes => "limits.max_buffered_bytes",
        max_open_files => "limits.max_open_files",
        max_tracked_files => "limits.max_tracked_files",
        forget_after => "forget_after",
        max_dead_letter_bytes => "limits.max_dead_letter_bytes",
        shutdown_timeout => "shutdown_timeout",
        checkpoint_interval => "checkpoint_interval",
        poll_interval => "poll_interval",
        log_format => "log_format",
        log_level => "log_level",
    );
    let names = |s: &Settings| s.sinks.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    if names(new) != names(old) {
        tracing::warn!(
            key = "sinks",
            "sinks added, removed, renamed or reordered in the config file; takes effect after a restart"
        );
    }
    for (name, send) in lanes {
        // Agent-wide limits reach every lane, its sink renamed in the file or not.
        if (new.lines_per_sec, new.bytes_per_sec) != (old.lines_per_sec, old.bytes_per_sec) {
            *send
                .global
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new((
                Limit::per_second(u64::from(new.lines_per_sec)),
                Limit::per_second(new.bytes_per_sec),
            ));
        }
        let (Some(was), Some(now)) = (
            old.sinks.iter().find(|s| *s.name == **name),
            new.sinks.iter().find(|s| *s.name == **name),
        ) else {
            continue;
        };
        if now != was {
            match crate::sink::build(now, &send.metrics.endpoints) {
                Ok(sink) => {
                    send.sink.replace(sink);
                    let still = |u: &String| new.sinks.iter().any(|s| s.urls.contains(u));
                    for gone in was.urls.iter().filter(|u| !still(u)) {
                        send.metrics.endpoints.forget(gone);
                    }
                    tracing::info!(sink = %name, urls = %now.urls.join(","), "sink reconfigured");
                }
                Err(e) => {
                    tracing::error!(sink = %name, error = %e, "new sink settings rejected; the running sink stays")
                }
            }
        }
    }
    sources.send_replace(Arc::new(new.sources.clone()));
    let hash = new.fingerprint.hash();
    if let Some((_, send)) = lanes.first() {
        send.metrics.reloads.inc();
        send.metrics
            .config_info
            .in_force(Some(&old.fingerprint.hash()), &hash);
    }
    tracing::info!(
        sources = new.sources.len(),
        changed = %old.fingerprint.changed(&new.fingerprint).join(", "),
        config_hash = %hash,
        "configuration reloaded"
    );
}
