//! `aggregator` binary: parse flags, load config, open the store, bind, run.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use logship_aggregator::config::{Backend, Config, Overrides};
use logship_aggregator::store::{RedisStore, SledOptions, SledStore, Store};

/// Receives log batches from agents, stores them durably, serves them back.
#[derive(Debug, Parser)]
#[command(name = "aggregator", version)]
struct Cli {
    /// TOML configuration file (then AGGREGATOR_* variables, then these flags).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:3000]; port 0 picks a free port.
    #[arg(long)]
    listen: Option<String>,
    /// Directory of the embedded sled database [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Validate and print the resolved configuration, then exit (78 if it is bad).
    #[arg(long)]
    check_config: bool,
    /// Log format: text or json [default: text, or the config's log_format].
    #[arg(long)]
    log_format: Option<String>,
    /// What to serve: all, ingest or query [default: all, or the config's role].
    #[arg(long)]
    role: Option<String>,
}

fn main() -> std::process::ExitCode {
    logship_common::limit_allocator_arenas(
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
    );
    logship_common::run_main("aggregator", real_main)
}

fn real_main() -> anyhow::Result<()> {
    logship_common::release_large_allocations();
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen,
        data_dir: cli.data_dir,
        log_format: cli.log_format,
        role: cli.role,
    };
    let loaded = Config::load(cli.config.as_deref(), &overrides)?;
    let settings = loaded.validate()?;
    logship_common::init_tracing(settings.log_format, settings.log_level.as_deref());
    if cli.check_config {
        logship_common::out!("{}", logship_common::config::redacted(&loaded.config)?);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.worker_threads)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let signal = logship_common::shutdown_signal();
        let store: Arc<dyn Store> = match &settings.backend {
            Backend::Sled => Arc::new(
                SledStore::open(
                    &settings.data_dir,
                    &SledOptions {
                        cache_capacity: settings.cache_capacity,
                        seal_after: Some(settings.seal_after),
                    },
                )
                .with_context(|| {
                    format!("opening the store in {}", settings.data_dir.display())
                })?,
            ),
            Backend::Redis(opts) => {
                let store = RedisStore::new(opts.clone());
                // Not fatal: the aggregator serves 503s until Redis answers.
                if let Err(e) = store.check().await {
                    tracing::warn!(error = %e.report(), "redis not reachable yet; answering 503 until it is");
                }
                Arc::new(store)
            }
        };
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let addr = listener.local_addr()?;
        let backend = match &settings.backend {
            Backend::Sled => format!("sled in {}", settings.data_dir.display()),
            Backend::Redis(o) => format!("redis at {}", o.nodes.join(",")),
        };
        let (tls, role) = (settings.tls.is_some(), settings.role.name());
        let ready = move || {
            tracing::info!(%addr, tls, role, store = %backend, "aggregator listening");
            // One stable line on stdout, so scripts and tests learn the port when it was 0.
            let scheme = if tls { "https" } else { "http" };
            logship_common::out!("aggregator listening on {scheme}://{addr}");
        };
        // SIGHUP re-reads the same layers: the file, AGGREGATOR_* variables, these flags.
        let reload = move || Config::load(cli.config.as_deref(), &overrides)?.validate();
        logship_aggregator::run(settings, store, listener, signal, reload, ready).await
    })
}
