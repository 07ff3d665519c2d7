//! The aggregator: receives batches of log lines over HTTP, stores them durably and
//! idempotently, and serves them back byte-identical. This file only wires the parts:
//!
//! - [`App`] (`app.rs`): the state every request shares — settings, store, metrics, rate
//!   limiter, token checks, ingest events, concurrency caps;
//! - [`busy`]: CPU-heavy steps offloaded from the workers, and how long a request kept one;
//! - [`config`]: the TOML/env/flag configuration and its validated [`Settings`](config::Settings);
//! - [`server`]: the accept loop, connection cap, graceful shutdown;
//! - [`connection`]: one connection's state, idle reclaim at the cap, JSON answers for what
//!   hyper rejects before routing;
//! - [`http`]: routes — ingest, download, listings, metrics — and their error answers;
//! - [`store`]: the `Store` trait and its sled implementation (bucketed lines, group commit);
//! - [`metrics`]: the Prometheus registry;
//! - [`reload`]: SIGHUP re-reads the configuration and swaps in what can change live;
//! - `sweeper.rs`: the periodic retention and compaction sweep.

mod app;
pub mod busy;
pub mod config;
pub mod connection;
pub mod fleet;
pub mod http;
pub mod metrics;
pub mod reload;
pub mod server;
mod sweeper;
pub mod tls;

/// The storage layer, its own crate (`store/`): the trait, the sled backend.
pub use logship_store as store;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use app::{file_hash, App};
use config::Settings;
use store::Store;

/// Runs the aggregator on `listener` until `shutdown` resolves; flushes the store last.
/// `ready` is called once SIGHUP is handled: announcing the address before that let a
/// reload sent at once (a script, a test, `systemctl reload`) kill the process, SIGHUP's
/// default.
pub async fn run(
    settings: Settings,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    reload_config: impl Fn() -> Result<Settings, config::ConfigError> + Send + 'static,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let app = App::new(settings, store.clone());
    tokio::spawn(app::forget_quiet_hosts(Arc::downgrade(&app)));
    if app.settings().role.queries() {
        // Writes through other aggregators sharing the store wake followers here too.
        let written = app.written.clone();
        store.watch_writes(Arc::new(move |host: &str, file: &str| {
            let _ = written.send(file_hash(host, file));
        }));
    }
    reload::on_sighup(Arc::downgrade(&app), reload_config);
    ready();
    tokio::spawn(sweeper::sweep_periodically(Arc::downgrade(&app)));
    server::serve(app, listener, shutdown).await;
    store.flush().await?;
    tracing::info!("store flushed; bye");
    Ok(())
}
