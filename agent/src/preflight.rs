//! `agent --check-config`: what the agent would do with this configuration, and whether it
//! can — before systemd starts it. Errors (a state directory that cannot be written) make the
//! check exit 78, as the agent itself would; warnings (a pattern that matches nothing — a typo
//! such as `acess.log` — or a file the agent may not read) are printed and named.
//! `--check-sink` also sends the sink one empty, authenticated batch, so a wrong URL, TLS
//! setting or token shows here rather than as parked files later.

use std::path::PathBuf;

use crate::config::{ConfigError, Settings};
use crate::sink::{Outcome, Sink};

/// What the check found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Files that would be shipped now, with their source's index.
    pub files: Vec<(PathBuf, usize)>,
    /// The agent cannot run like this (exit 78).
    pub errors: Vec<String>,
    /// It can, but something is probably not what the operator meant.
    pub warnings: Vec<String>,
}

/// Checks the state directory, every pattern and every matched file.
pub fn check(settings: &Settings) -> Findings {
    let mut f = Findings::default();
    if let Err(e) = crate::checkpoint::state_dir_usable(&settings.state_dir) {
        f.errors
            .push(format!("state_dir {}: {e}", settings.state_dir.display()));
    }
    let crate::source::Expanded { files, unreadable } =
        crate::source::expand_reporting(&settings.sources);
    for dir in unreadable {
        f.warnings.push(format!(
            "cannot read the directory {}: permission denied; files in it are not shipped",
            dir.display()
        ));
    }
    for (i, source) in settings.sources.iter().enumerate() {
        for pattern in &source.patterns {
            let Ok(glob) = globset::Glob::new(pattern) else {
                continue; // validation already refused a bad pattern
            };
            let m = glob.compile_matcher();
            if !files.iter().any(|(p, s)| *s == i && m.is_match(p)) {
                f.warnings.push(format!(
                    "sources[{i}].paths: {pattern:?} matches no file now (a typo? it is watched, and files that appear later are shipped)"
                ));
            }
        }
    }
    for (path, i) in files {
        // As the agent opens it: a FIFO's open must not block the check.
        match crate::open_file::open_regular(&path) {
            Ok(_) => f.files.push((path, i)),
            Err(e) => f.warnings.push(format!(
                "cannot read {} (sources[{i}]): {e}; it is shipped once it can be read",
                path.display()
            )),
        }
    }
    for (i, source) in settings.sources.iter().enumerate() {
        if source.kind != "journald" {
            continue;
        }
        let mut cmd = std::process::Command::new("journalctl");
        cmd.arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if !cmd.status().is_ok_and(|s| s.success()) {
            f.errors.push(format!(
                "sources[{i}]: journald needs journalctl (systemd), which cannot be run here"
            ));
        }
        if let Some(d) = &source.directory {
            if !d.is_dir() {
                f.warnings.push(format!(
                    "sources[{i}].directory: {} is not a directory now (journalctl is started again until it is)",
                    d.display()
                ));
            }
        }
    }
    f
}

/// Sends `sink` one batch with no lines (the aggregator stores nothing for it): the answer
/// says whether the URL, TLS and token are right. A refusal is the config's fault
/// ([`ConfigError`], exit 78); an unreachable sink may be a moment's, so it is a plain error.
pub async fn check_sink(
    settings: &Settings,
    configured: &crate::config::SinkSettings,
    sink: &dyn Sink,
) -> anyhow::Result<String> {
    let body = logship_wire::compact::Writer::new(&settings.host, "/agent-check-sink", "check", 0)
        .finish();
    let urls = configured.urls.join(", ");
    match sink.send(&body).await {
        Outcome::Ok => Ok(format!("sink {urls}: reachable, and it accepted an authenticated batch")),
        Outcome::Park { endpoint, reason } => Err(ConfigError(format!(
            "sink {endpoint} refuses batches: {reason} (check sink.url and sink.token)"
        ))
        .into()),
        Outcome::Reject { reason } => Err(ConfigError(format!(
            "sink {urls} refused an empty batch: {reason} (is sink.url an aggregator's /store/batch?)"
        ))
        .into()),
        Outcome::TooLarge => Err(ConfigError(format!(
            "sink {urls} answered 413 to an empty batch (is sink.url an aggregator's /store/batch?)"
        ))
        .into()),
        Outcome::Retry { reason, .. } => {
            anyhow::bail!("sink {urls} not reachable now: {reason}")
        }
    }
}
