//! `agent` binary: parse flags, load and validate the config, then run — or list or replay
//! dead letters.

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use logship_agent::config::{self, Overrides, Settings};

/// Tails log files and ships them to the aggregator.
#[derive(Debug, Parser)]
#[command(name = "agent", version)]
struct Cli {
    /// TOML configuration (then AGENT_* variables, e.g. AGENT_SINK__URL, then these flags).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Preflight: validate, print the resolved configuration (secrets as "***"), the values
    /// in effect, the files it would ship and what is wrong (a state_dir it cannot write, a
    /// pattern matching nothing, an unreadable file), and exit (78 if it cannot run so).
    #[arg(long)]
    check_config: bool,
    /// With --check-config (implied): also send the sink one empty authenticated batch and
    /// report URL, TLS and token problems.
    #[arg(long)]
    check_sink: bool,
    /// Log format: text or json [default: text, or the config's log_format].
    #[arg(long, global = true)]
    log_format: Option<String>,
    /// Host name stored with every line [default: the machine's hostname].
    #[arg(long)]
    host: Option<String>,
    /// Directory for checkpoints and dead letters [default: agent-state beside the config].
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Batches the sink refused as malformed, kept in STATE_DIR/dead-letter.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
}

#[derive(Debug, Subcommand)]
enum DeadLetters {
    /// Lists each dead letter: its file, lines and why it was refused.
    List,
    /// Sends each again through the configured sink; each is deleted once acknowledged
    /// (exit 1 if any is left).
    Replay,
}

fn main() -> std::process::ExitCode {
    logship_common::limit_allocator_arenas(1);
    logship_common::run_main("agent", real_main)
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Some(config_path) = cli.config.clone() else {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--config <CONFIG> is required",
            )
            .exit()
    };
    let overrides = Overrides {
        host: cli.host,
        state_dir: cli.state_dir,
        log_format: cli.log_format,
    };
    let loaded = config::load(&config_path, &overrides)?;
    let settings = loaded.validate()?;
    logship_common::init_tracing(settings.log_format, settings.log_level.as_deref());
    if let Some(Command::DeadLetters(what)) = cli.command {
        return dead_letters(what, &settings);
    }
    if cli.check_config || cli.check_sink {
        return preflight(&loaded, &settings, cli.check_sink);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let signal = logship_common::shutdown_signal();
        // SIGHUP re-reads the same layers: the file, AGENT_* variables, these flags.
        let reload = move || config::load(&config_path, &overrides)?.validate();
        logship_agent::run(settings, signal, reload).await
    })
}

/// `--check-config` (and `--check-sink`): prints what the agent would do, and fails as the
/// agent would (78) when it could not run with this configuration.
fn preflight(loaded: &config::Loaded, settings: &Settings, sink: bool) -> anyhow::Result<()> {
    use logship_common::out;
    out!("# resolved configuration (secrets shown as \"***\")");
    out!("{}", logship_common::config::redacted(&loaded.config)?);
    out!("# in effect:");
    out!(
        "# host = {:?}, state_dir = {:?}",
        settings.host,
        settings.state_dir
    );
    out!(
        "# limits: max_in_flight = {}, max_buffered_bytes = {}, max_open_files = {}, max_tracked_files = {}, max_dead_letter_bytes = {}, lines_per_sec = {}, bytes_per_sec = {} (0: no limit)",
        settings.max_in_flight,
        settings.max_buffered_bytes,
        settings.max_open_files,
        settings.max_tracked_files,
        settings.max_dead_letter_bytes,
        settings.lines_per_sec,
        settings.bytes_per_sec
    );
    for (n, configured) in settings.sinks.iter().enumerate() {
        let what = match configured.kind.as_str() {
        "aggregator" => format!("the multi-file compact form (each line with its read time; one file per request in the older form to an aggregator that does not announce it), up to {} bytes per request; lines placed by number, 2 batches of a file in flight", configured.max_request_bytes),
        "loki" => format!(
            "Loki push ({}), labels host, filename{}{}; one batch of a file in flight; partial lines wait until complete",
            if configured.loki_json { "JSON" } else { "protobuf + snappy" },
            configured.labels.iter().map(|(k, v)| format!(", {k}={v:?}")).collect::<String>(),
            configured.tenant.as_deref().map(|t| format!(", tenant {t:?}")).unwrap_or_default()
        ),
        "otlp" => format!(
            "OTLP/HTTP logs (protobuf), resource host.name, log.file.path, log.file.name{}; one batch of a file in flight; partial lines wait until complete",
            configured.labels.iter().map(|(k, v)| format!(", {k}={v:?}")).collect::<String>()
        ),
        _ => "JSON lines on stdout".to_string(),
    };
        let state = logship_agent::lanes::state_dir(settings, n);
        out!(
            "# sink {:?}: {} → {}: {what}; state in {}",
            configured.name,
            configured.kind,
            configured.urls.join(", "),
            state.display()
        );
    }
    if settings.sinks.len() > 1 {
        out!(
            "# {} sinks: each reads every file itself from its own checkpoint, with {} bytes of the memory budget",
            settings.sinks.len(),
            logship_agent::lanes::budget_share(settings)
        );
    }
    let d = |t: std::time::Duration| humantime::format_duration(t).to_string();
    for (i, s) in settings.sources.iter().enumerate() {
        let o = &s.options;
        if let (Some(name), "stdin") = (&s.name, s.kind.as_str()) {
            out!(
                "# sources[{i}] stdin: standard input as one stream, stored as {:?} (a new generation each run, no checkpoint); the agent exits once it is read and acknowledged, 1 if any of it was refused",
                name
            );
        }
        if let (Some(name), "journald") = (&s.name, s.kind.as_str()) {
            out!(
                "# sources[{i}] journald: {}{}, one stream per unit stored as {:?}; the journal cursor is the checkpoint",
                s.directory.as_ref().map_or("the system journal".to_string(), |d| format!("the journal files in {}", d.display())),
                if s.matches.is_empty() { String::new() } else { format!(", entries matching {}", s.matches.join(" ")) },
                name
            );
        }
        if let Some(m) = &o.multiline {
            out!(
                "# sources[{i}] multiline: a line {} {:?} {} (at most {} lines, closed {} after its last line); loki and otlp sinks get one entry an event",
                if m.matches_continuation { "matching" } else { "not matching" },
                m.pattern,
                "continues the event before it",
                m.max_lines,
                d(m.timeout)
            );
        }
        out!(
            "# sources[{i}] {:?}: batch_lines = {}, batch_bytes = {}, linger = {}, read_from = {:?}, max_line_bytes = {}, partial_line_timeout = {}, close_inactive = {}, rotate_wait = {}, retry = {{ initial = {}, max = {} }}, lines_per_sec = {}, bytes_per_sec = {}",
            s.patterns,
            o.batch_lines,
            o.batch_bytes,
            d(o.linger),
            o.read_from,
            o.max_line_bytes,
            d(o.partial_line_timeout),
            d(o.close_inactive),
            d(o.rotate_wait),
            d(o.retry_initial),
            d(o.retry_max),
            o.lines_per_sec,
            o.bytes_per_sec
        );
    }
    let found = logship_agent::preflight::check(settings);
    out!("# {} file(s) would be shipped now:", found.files.len());
    if found.files.len() > settings.max_tracked_files {
        out!(
            "# limits.max_tracked_files = {}: the other {} wait until tracked files finish",
            settings.max_tracked_files,
            found.files.len() - settings.max_tracked_files
        );
    }
    for (p, i) in &found.files {
        out!("{}\t(sources[{i}])", p.display());
    }
    for w in &found.warnings {
        out!("# warning: {w}");
    }
    for e in &found.errors {
        out!("# error: {e}");
    }
    if !found.errors.is_empty() {
        return Err(config::ConfigError(found.errors.join("; ")).into());
    }
    if sink {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        for configured in &settings.sinks {
            let built = logship_agent::sink::build(
                configured,
                &logship_agent::metrics::EndpointMetrics::default(),
            )
            .map_err(|e| config::ConfigError(format!("sink {:?}: {e:#}", configured.name)))?;
            let said = runtime.block_on(logship_agent::preflight::check_sink(
                settings,
                configured,
                built.as_ref(),
            ))?;
            out!("# {said}");
        }
    }
    Ok(())
}

fn dead_letters(what: DeadLetters, settings: &Settings) -> anyhow::Result<()> {
    use logship_agent::dead_letter;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut kept = 0;
    // Each sink keeps the batches it refused; each goes back to its own sink.
    for (n, configured) in settings.sinks.iter().enumerate() {
        let dir = dead_letter::dir(&logship_agent::lanes::state_dir(settings, n));
        let of = if settings.sinks.len() > 1 {
            format!(" (sink {:?})", configured.name)
        } else {
            String::new()
        };
        match what {
            DeadLetters::List => {
                let letters = dead_letter::list(&dir)
                    .with_context(|| format!("reading {}", dir.display()))?;
                for l in &letters {
                    logship_common::out!(
                        "{}\t{} bytes\t{}\t{}",
                        l.path.display(),
                        l.bytes,
                        l.summary,
                        l.reason
                    );
                }
                logship_common::out!(
                    "# {} dead letter(s) in {}{of}",
                    letters.len(),
                    dir.display()
                );
            }
            DeadLetters::Replay => {
                let sink = logship_agent::sink::build(
                    configured,
                    &logship_agent::metrics::EndpointMetrics::default(),
                )?;
                let done = runtime
                    .block_on(dead_letter::replay(&dir, sink.as_ref(), |line| {
                        logship_common::out!("{line}")
                    }))
                    .with_context(|| format!("replaying {}", dir.display()))?;
                logship_common::out!("# delivered {}, left {}{of}", done.delivered, done.kept);
                kept += done.kept;
            }
        }
    }
    if kept > 0 {
        anyhow::bail!("{kept} dead letter(s) were not delivered");
    }
    Ok(())
}
