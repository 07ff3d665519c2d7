//! `agent` binary: parse flags, load and validate the config, run.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use logship_agent::config::{Loaded, Overrides};

/// Tails log files and ships them to the aggregator.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration (then AGENT_* variables, e.g. AGENT_SINK__URL, then these flags).
    #[arg(long)]
    config: PathBuf,
    /// Validate, print the resolved configuration and the files it would ship, and exit.
    #[arg(long)]
    check_config: bool,
    /// Host name stored with every line [default: the machine's hostname].
    #[arg(long)]
    host: Option<String>,
    /// Directory for checkpoints and dead letters [default: agent-state beside the config].
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

/// Prints to stdout, ignoring a closed pipe (`| head`) instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

fn main() -> std::process::ExitCode {
    logship_common::init_tracing();
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let overrides = Overrides {
        host: cli.host,
        state_dir: cli.state_dir,
    };
    let loaded = Loaded::load(&cli.config, &overrides)?;
    let settings = loaded.validate()?;
    if cli.check_config {
        out!("# resolved configuration");
        out!(
            "{}",
            toml::to_string_pretty(&loaded.config).context("rendering the configuration")?
        );
        out!(
            "# host = {:?}, state_dir = {:?}",
            settings.host,
            settings.state_dir
        );
        let files = logship_agent::source::expand(&settings.sources);
        out!("# {} file(s) would be shipped now:", files.len());
        for (p, i) in files {
            out!("{}\t(sources[{i}])", p.display());
        }
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let signal = logship_common::shutdown_signal();
        logship_agent::run(settings, signal).await
    })
}
