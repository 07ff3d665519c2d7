//! Helpers both binaries share, so each exists once:
//! - [`units`]: sizes (`"1MiB"`) and durations (`"200ms"`) from config strings, and TOML
//!   errors rendered with their line;
//! - [`shutdown_signal`]: SIGINT or SIGTERM, whichever comes first;
//! - [`init_tracing`]: logging to stderr, filtered by `RUST_LOG`.

pub mod units;

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops gracefully");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown signal received");
}

/// Logs to stderr; `RUST_LOG` picks the level (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
