//! `agent` binary: parse flags, load and validate the config, run.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use logship_agent::config::{Loaded, Overrides};

/// Tails log files and ships them to the aggregator.
#[derive(Debug, Parser)]
#[command(name = "agent", version)]
struct Cli {
    /// TOML configuration (then AGENT_* variables, e.g. AGENT_SINK__URL, then these flags).
    #[arg(long)]
    config: PathBuf,
    /// Validate, print the resolved configuration and the files it would ship, and exit
    /// (78 if the configuration is bad).
    #[arg(long)]
    check_config: bool,
    /// Log format: text or json [default: text, or the config's log_format].
    #[arg(long)]
    log_format: Option<String>,
    /// Host name stored with every line [default: the machine's hostname].
    #[arg(long)]
    host: Option<String>,
    /// Directory for checkpoints and dead letters [default: agent-state beside the config].
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    logship_common::run_main("agent", real_main)
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let overrides = Overrides {
        host: cli.host,
        state_dir: cli.state_dir,
        log_format: cli.log_format,
    };
    let loaded = Loaded::load(&cli.config, &overrides)?;
    let settings = loaded.validate()?;
    logship_common::init_tracing(settings.log_format, settings.log_level.as_deref());
    if cli.check_config {
        logship_common::out!("# resolved configuration");
        logship_common::out!(
            "{}",
            toml::to_string_pretty(&loaded.config).context("rendering the configuration")?
        );
        logship_common::out!(
            "# host = {:?}, state_dir = {:?}",
            settings.host,
            settings.state_dir
        );
        let files = logship_agent::source::expand(&settings.sources);
        logship_common::out!("# {} file(s) would be shipped now:", files.len());
        for (p, i) in files {
            logship_common::out!("{}\t(sources[{i}])", p.display());
        }
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let signal = logship_common::shutdown_signal();
        // SIGHUP re-reads the same layers: the file, AGENT_* variables, these flags.
        let reload = move || Loaded::load(&cli.config, &overrides)?.validate();
        logship_agent::run(settings, signal, reload).await
    })
}
