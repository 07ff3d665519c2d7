//! Agent configuration in two layers: serde types that mirror the TOML (every key has a
//! named default), layered by the shared loader ([`logship_common::config`]: file, then
//! `AGENT_*` environment typed by key, then flags), then validated into [`Settings`] —
//! parsed durations, sizes, compiled globs, TLS material. Every error names the key and
//! where it was set (file and line, environment variable or flag).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::GlobSet;
use logship_common::config::{resolve, Secret, Validate};
use logship_common::units;
use serde::{Deserialize, Serialize};

mod sink;
mod source;

pub use source::literal_root;
use source::validate_source;

/// The file's shape.
/// The sink types `[sink] type` may name; `sink::build` makes each (the config owns the
/// list, so it needs neither the sink nor the source modules).
pub const SINK_KINDS: &[&str] = &["aggregator", "loki", "otlp", "stdout"];
/// The source types `[[sources]] type` may name; `source::build` makes each.
pub const SOURCE_KINDS: &[&str] = &["file", "stdin", "journald"];

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Host name stored with every line; default: the machine's hostname.
    pub host: Option<String>,
    /// Where checkpoints and dead letters live; default: `agent-state` beside the config.
    pub state_dir: Option<PathBuf>,
    /// Address of the agent's own Prometheus endpoint; off when absent.
    pub metrics_listen: Option<String>,
    /// How long shutdown waits for outstanding acknowledgements. Default "30s".
    pub shutdown_timeout: Option<String>,
    /// How often acknowledged positions are written to disk. Default "1s".
    pub checkpoint_interval: Option<String>,
    /// Fallback scan for new, grown or rotated files when notify misses something. Default "5s".
    pub poll_interval: Option<String>,
    /// A checkpoint whose file has been gone (no file of that identity at its path) this
    /// long is removed. Default "24h".
    pub forget_after: Option<String>,
    /// `"text"` (default) or `"json"` (one object per line, for a log pipeline).
    pub log_format: Option<String>,
    /// Log filter when `RUST_LOG` is not set, e.g. `"info"` or `"warn,logship_agent=debug"`.
    pub log_level: Option<String>,
    /// One sink (`[sink]`), or several (`[[sinks]]`), not both.
    pub sink: Option<SinkConfig>,
    /// Several sinks: every line goes to each, each at its own pace.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    #[serde(default)]
    pub defaults: SourceConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
}

/// `sink.url`: one URL or several.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum UrlList {
    One(String),
    Many(Vec<String>),
}

impl UrlList {
    /// The URLs; a single string may list several separated by commas (what an
    /// `AGENT_SINK__URL` variable can hold).
    pub fn urls(&self) -> Vec<String> {
        match self {
            UrlList::One(u) => u.split(',').map(|u| u.trim().to_owned()).collect(),
            UrlList::Many(v) => v.clone(),
        }
    }
}

/// `[sink]`, or one `[[sinks]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// The sink's name in logs, metrics and its state directory (`state_dir/sinks/<name>`
    /// for every sink after the first); default: its type.
    pub name: Option<String>,
    /// `"aggregator"` (HTTP), `"loki"` (Loki's push API), `"otlp"` (OTLP/HTTP logs) or
    /// `"stdout"` (JSON lines, for dry runs).
    #[serde(rename = "type")]
    pub kind: String,
    /// `POST /store/batch` URL of the aggregator, or a list of them (several aggregators
    /// sharing one store): batches are spread across the healthy ones, and one that refuses
    /// connections or times out is skipped, with its own backoff, until it answers again.
    pub url: Option<UrlList>,
    /// Bearer token sent with every request.
    pub token: Option<String>,
    /// A file holding the token (first non-comment line), instead of `token`; re-read on
    /// SIGHUP, so a rotated token needs no config edit.
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates trusted for an `https://` URL; default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS, with `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// `"none"`, `"gzip"` or `"zstd"`.
    pub compression: String,
    /// zstd level: 1 by default; negative levels (down to -7) are faster with less
    /// compression. Ignored for gzip and none.
    pub compression_level: i32,
    /// Deadline of one request.
    pub timeout: String,
    /// With several URLs: a request that an endpoint has not answered after this long,
    /// while that endpoint answered nothing else either, is sent to the next one too
    /// ("0s": never). Resends are idempotent; the first acknowledgement wins.
    pub hedge_after: String,
    /// aggregator: the largest request that joins several files' batches (a batch larger
    /// than this goes alone).
    pub max_request_bytes: String,
    /// loki: labels every stream carries beside `host` and `filename`, e.g.
    /// `{ job = "nginx" }`.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// otlp: resource attributes beside `host.name`, `log.file.path` and `log.file.name`.
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
    /// loki: the tenant (`X-Scope-OrgID`) of a multi-tenant Loki.
    pub tenant: Option<String>,
    /// loki: `"protobuf"` (protobuf + snappy, what Promtail and Alloy send) or `"json"`
    /// (Loki's JSON form, gzip-compressed unless `compression = "none"`; lines that are not
    /// UTF-8 get replacement characters, as JSON strings must be text).
    pub format: Option<String>,
    /// loki, otlp: basic auth's user; the token (`token`/`token_file`) is its password.
    /// Without it the token goes as a bearer token.
    pub username: Option<String>,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            name: None,
            kind: "aggregator".into(),
            url: None,
            token: None,
            token_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            compression: "zstd".into(),
            compression_level: 1,
            timeout: "30s".into(),
            hedge_after: "1s".into(),
            max_request_bytes: "1MiB".into(),
            labels: Default::default(),
            attributes: Default::default(),
            tenant: None,
            format: None,
            username: None,
        }
    }
}

/// `[[sources]]` and `[defaults]`: every option is optional so a source inherits what it
/// does not set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `"file"` (the default) or `"stdin"`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// stdin: the file name its lines are stored under (default `"stdin"`); journald: the
    /// file name of each unit's stream, `{unit}` replaced (default `"journal/{unit}"`).
    pub name: Option<String>,
    /// journald: read journal files from this directory instead of the system journal.
    pub directory: Option<String>,
    /// journald: only entries matching these `FIELD=value` pairs (as `journalctl` takes
    /// them: the same field ORs, different fields AND).
    pub matches: Option<Vec<String>>,
    /// Paths and globs (`*`, `?`, `[..]`, `**`); absolute, or relative to the config file.
    pub paths: Option<Vec<String>>,
    /// Globs of paths never to ship.
    pub exclude: Option<Vec<String>>,
    pub batch_lines: Option<usize>,
    pub batch_bytes: Option<String>,
    pub linger: Option<String>,
    /// `"beginning"` or `"end"`, for files without a checkpoint.
    pub read_from: Option<String>,
    pub max_line_bytes: Option<String>,
    /// A last line without `\n` is shipped (as partial) after this long.
    pub partial_line_timeout: Option<String>,
    /// Close a file's descriptor after this long without new data.
    pub close_inactive: Option<String>,
    /// After a rotation, keep reading the old file this long for late writes.
    pub rotate_wait: Option<String>,
    pub rate_limit: Option<RateLimitConfig>,
    pub retry: Option<RetryConfig>,
    /// Lines that continue an event (a stack trace's frames) join the line before them,
    /// for the sinks that carry events (loki, otlp: one entry an event).
    pub multiline: Option<MultilineConfig>,
    /// Ship files reached through a symlink whose target lies outside the source's
    /// directories. Default false: a link dropped into a watched directory must not ship
    /// whatever the agent can read (say, a root-only file).
    pub follow_symlinks: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub lines_per_sec: Option<u32>,
    pub bytes_per_sec: Option<String>,
}

/// `multiline = { start = "…" }` or `{ continue = "…" }`, with `max_lines` and `timeout`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MultilineConfig {
    /// A line matching this starts an event; the lines that do not continue it.
    pub start: Option<String>,
    /// A line matching this continues the event before it (the other way round).
    #[serde(rename = "continue")]
    pub continues: Option<String>,
    /// An event is closed at this many lines (default 500).
    pub max_lines: Option<usize>,
    /// An event is closed this long after its last line when no other comes (default 1s).
    pub timeout: Option<String>,
}

/// The validated rule of [`MultilineConfig`].
#[derive(Debug, Clone)]
pub struct Multiline {
    /// The pattern, as written (what `PartialEq` compares).
    pub pattern: String,
    pub regex: regex::bytes::Regex,
    /// `true`: the pattern marks continuation lines; `false`: it marks the first line of
    /// an event.
    pub matches_continuation: bool,
    pub max_lines: usize,
    pub timeout: Duration,
}

impl PartialEq for Multiline {
    fn eq(&self, o: &Self) -> bool {
        (
            &self.pattern,
            self.matches_continuation,
            self.max_lines,
            self.timeout,
        ) == (&o.pattern, o.matches_continuation, o.max_lines, o.timeout)
    }
}

impl Multiline {
    /// Whether `line` continues the event of the line before it.
    pub fn continues(&self, line: &[u8]) -> bool {
        self.regex.is_match(line) == self.matches_continuation
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    pub initial: Option<String>,
    pub max: Option<String>,
}

/// `[limits]`, across all files.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub bytes_per_sec: Option<String>,
    pub lines_per_sec: Option<u32>,
    /// Requests in flight at once (default 64). Each waits for a durable ack (a group commit,
    /// a few ms), so with many files this is what keeps the aggregator busy: 16 instead of
    /// 64 cost a fifth of the throughput with 1,000 files, and saved ~10-15 MiB of peak
    /// memory with 100 busy files (memory the budget does not count).
    pub max_in_flight: Option<usize>,
    /// Bytes of sealed batches waiting or in flight; bounds memory whatever the backlog.
    pub max_buffered_bytes: Option<String>,
    /// Descriptors of log files held open at once; default: a quarter of `ulimit -n`.
    pub max_open_files: Option<usize>,
    /// Bytes the dead-letter directory may hold; past it, refused batches wait (their files'
    /// checkpoints with them) instead of filling the disk.
    pub max_dead_letter_bytes: Option<String>,
    /// Files tailed at once (Filebeat's `harvester_limit`); past it, newly found files wait
    /// until a tracked one finishes. Default 10,000.
    pub max_tracked_files: Option<usize>,
}

/// Where to start a file that has no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReadFrom {
    Beginning,
    End,
}

/// Validated options of one source's pipelines.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineOptions {
    pub batch_lines: usize,
    pub batch_bytes: usize,
    pub linger: Duration,
    pub read_from: ReadFrom,
    pub max_line_bytes: usize,
    pub partial_line_timeout: Duration,
    pub close_inactive: Duration,
    pub rotate_wait: Duration,
    pub lines_per_sec: u32,
    pub bytes_per_sec: u64,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub multiline: Option<Multiline>,
}

/// One validated `[[sources]]` entry.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub kind: String,
    /// Absolute patterns as written (after resolving relative ones).
    pub patterns: Vec<String>,
    pub include: GlobSet,
    pub exclude: GlobSet,
    /// Directories to watch and walk: the literal prefix of each pattern.
    pub roots: Vec<PathBuf>,
    /// Shared by every file of the source (one copy, not one per file).
    pub options: std::sync::Arc<PipelineOptions>,
    /// Whether symlinks to targets outside `roots` are shipped.
    pub follow_symlinks: bool,
    /// stdin: the file name its lines are stored under; journald: each unit's, `{unit}`
    /// replaced.
    pub name: Option<String>,
    /// journald: the journal directory (`None`: the system journal).
    pub directory: Option<PathBuf>,
    /// journald: `FIELD=value` matches.
    pub matches: Vec<String>,
}

/// Validated sink settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSettings {
    /// Unique among the sinks: `[A-Za-z0-9_-]`.
    pub name: String,
    pub kind: String,
    /// Every aggregator URL, in the order configured (empty for other sinks).
    pub urls: Vec<String>,
    pub token: Option<Secret>,
    pub compression: Compression,
    pub compression_level: i32,
    pub timeout: Duration,
    /// When to send a request that has no answer to another endpoint too (zero: never).
    pub hedge_after: Duration,
    /// The largest multi-file request (bytes, uncompressed).
    pub max_request_bytes: usize,
    /// TLS for an `https://` URL; `None` for `http://`.
    pub tls: Option<crate::client_tls::ClientTls>,
    /// loki: extra stream labels; otlp: extra resource attributes (sorted by name).
    pub labels: Vec<(String, String)>,
    /// loki: `X-Scope-OrgID`.
    pub tenant: Option<String>,
    /// loki: Loki's JSON form instead of protobuf + snappy.
    pub loki_json: bool,
    /// Basic auth's user (the token is the password).
    pub username: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Validated runtime settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: String,
    pub state_dir: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    pub shutdown_timeout: Duration,
    pub checkpoint_interval: Duration,
    pub poll_interval: Duration,
    /// At least one; the first keeps its state (checkpoints, dead letters) in `state_dir`
    /// itself, so an agent moved from `[sink]` to `[[sinks]]` resumes where it was.
    pub sinks: Vec<SinkSettings>,
    pub sources: Vec<SourceSettings>,
    pub bytes_per_sec: u64,
    pub lines_per_sec: u32,
    pub max_in_flight: usize,
    pub max_buffered_bytes: u64,
    pub max_open_files: usize,
    /// Files tailed at once; newly found files wait past it.
    pub max_tracked_files: usize,
    /// A checkpoint whose file has been gone this long is removed.
    pub forget_after: Duration,
    pub max_dead_letter_bytes: u64,
    pub log_format: logship_common::LogFormat,
    pub log_level: Option<String>,
    /// Each key's value hashed: what a reload changed, and which configuration runs.
    pub fingerprint: logship_common::config::Fingerprint,
}

pub use logship_common::ConfigError;

/// Command-line overrides, the top layer.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
}

/// The loaded config and where each value came from (for error messages).
pub type Loaded = logship_common::config::Loaded<Config>;

/// Loads `path`, then `AGENT_*` variables (`AGENT_SINK__URL` sets `sink.url`), then `overrides`.
pub fn load(path: &Path, overrides: &Overrides) -> Result<Loaded, ConfigError> {
    Loaded::load(Some(path), "AGENT_", overrides)
}

impl Validate for Config {
    type Settings = Settings;
    fn validate(&self, base: &Path) -> Result<Settings, KeyError> {
        validate(self, base)
    }
}

/// An error during validation: the dotted key (`sources[1].linger`) and the message.
type KeyError = (String, String);

fn validate(c: &Config, base: &Path) -> Result<Settings, KeyError> {
    let base = base.to_path_buf();
    let dur = |key: &str, v: &Option<String>, d: &str| {
        units::duration(key, v.as_deref().unwrap_or(d))
            .map_err(|m| (key.to_owned(), strip_key(key, m)))
    };
    let size = |key: &str, v: &Option<String>, d: &str| {
        units::size(key, v.as_deref().unwrap_or(d)).map_err(|m| (key.to_owned(), strip_key(key, m)))
    };
    let host = match &c.host {
        Some(h) if h.trim().is_empty() => return Err(("host".into(), "must not be empty".into())),
        Some(h) => h.clone(),
        None => gethostname::gethostname().to_string_lossy().into_owned(),
    };
    logship_wire::validate_names(&host, "/x", "g")
        .map_err(|e| ("host".to_owned(), e.to_string()))?;
    let state_dir = match &c.state_dir {
        Some(d) if d.is_absolute() => d.clone(),
        Some(d) => base.join(d),
        None => base.join("agent-state"),
    };
    let metrics_listen = c
        .metrics_listen
        .as_deref()
        .map(|s| {
            s.parse::<SocketAddr>()
                .map_err(|e| ("metrics_listen".to_owned(), format!("{s:?}: {e}")))
        })
        .transpose()?;

    let sinks = sink::validate_sinks(c, &base)?;
    if c.sources.is_empty() {
        return Err((
            "sources".into(),
            "at least one [[sources]] entry is required".into(),
        ));
    }
    if c.defaults.paths.is_some()
        || c.defaults.kind.is_some()
        || c.defaults.name.is_some()
        || c.defaults.directory.is_some()
        || c.defaults.matches.is_some()
    {
        return Err((
            "defaults".into(),
            "`type`, `paths`, `name`, `directory` and `matches` belong in [[sources]], not [defaults]".into(),
        ));
    }
    let mut sources = Vec::new();
    for (i, s) in c.sources.iter().enumerate() {
        let v = validate_source(i, s, &c.defaults, &base)?;
        if v.kind == "stdin" && sources.iter().any(|o: &SourceSettings| o.kind == "stdin") {
            return Err((
                format!("sources[{i}].type"),
                "there is one standard input: one stdin source at most".into(),
            ));
        }
        if v.kind == "journald"
            && sources
                .iter()
                .any(|o: &SourceSettings| o.kind == "journald")
        {
            return Err((
                format!("sources[{i}].type"),
                "one journald source at most (its `matches` can select several units)".into(),
            ));
        }
        if let Some(name) = &v.name {
            let name = name.replace("{unit}", "u");
            logship_wire::validate_names(&host, &name, "g")
                .map_err(|e| (format!("sources[{i}].name"), e.to_string()))?;
        }
        sources.push(v);
    }
    let open_default = (nofile_limit() / 4).clamp(16, 16_384) as usize;
    // Both become semaphores, which panic past a few quintillion permits.
    for (key, value) in [
        ("limits.max_in_flight", c.limits.max_in_flight),
        ("limits.max_open_files", c.limits.max_open_files),
        ("limits.max_tracked_files", c.limits.max_tracked_files),
    ] {
        if value.is_some_and(|v| v > MAX_COUNT) {
            return Err((key.into(), format!("more than the {MAX_COUNT} allowed")));
        }
    }
    let log_format =
        logship_common::LogFormat::parse("log_format", c.log_format.as_deref().unwrap_or("text"))
            .map_err(|e| ("log_format".to_owned(), e.0))?;
    Ok(Settings {
        fingerprint: logship_common::config::Fingerprint::of(c)
            .map_err(|e| (String::new(), e.to_string()))?,
        log_format,
        log_level: c.log_level.clone(),
        host,
        state_dir,
        metrics_listen,
        shutdown_timeout: dur("shutdown_timeout", &c.shutdown_timeout, "30s")?,
        checkpoint_interval: dur("checkpoint_interval", &c.checkpoint_interval, "1s")?,
        poll_interval: dur("poll_interval", &c.poll_interval, "5s")?.max(Duration::from_millis(10)),
        sinks,
        sources,
        bytes_per_sec: size("limits.bytes_per_sec", &c.limits.bytes_per_sec, "0")?,
        lines_per_sec: c.limits.lines_per_sec.unwrap_or(0),
        max_in_flight: c.limits.max_in_flight.unwrap_or(64).max(1),
        max_buffered_bytes: size(
            "limits.max_buffered_bytes",
            &c.limits.max_buffered_bytes,
            "32MiB",
        )?
        .max(1 << 20),
        max_open_files: c.limits.max_open_files.unwrap_or(open_default).max(4),
        max_tracked_files: c.limits.max_tracked_files.unwrap_or(10_000).max(1),
        forget_after: dur("forget_after", &c.forget_after, "24h")?,
        max_dead_letter_bytes: size(
            "limits.max_dead_letter_bytes",
            &c.limits.max_dead_letter_bytes,
            "256MiB",
        )?,
    })
}

/// The most in-flight batches or open files a config may ask for.
const MAX_COUNT: usize = 1_000_000;

/// The source's own value if set (and `true`), else the default's.
fn own_or<T>(own: Option<T>, default: Option<T>) -> (Option<T>, bool) {
    match own {
        Some(v) => (Some(v), true),
        None => (default, false),
    }
}

fn strip_key(key: &str, msg: String) -> String {
    msg.strip_prefix(&format!("{key}: "))
        .map(str::to_owned)
        .unwrap_or(msg)
}

/// The soft `ulimit -n`.
fn nofile_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Settings, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, text).map_err(|e| e.to_string())?;
        super::load(&p, &Overrides::default())
            .and_then(|l| l.validate())
            .map_err(|e| e.to_string())
    }

    const SINK: &str = "[sink]\nurl = \"http://127.0.0.1:3000/store/batch\"\n";

    #[test]
    fn every_kind_of_mistake_names_key_and_line() {
        let cases = [
            (format!("{SINK}[[sources]]\npaths = [\"/a\"]\nlingr = \"1s\"\n"), "agent.toml:5:", "lingr"),
            (format!("{SINK}[[sources]]\npaths = [\"/a\"]\nlinger = \"soon\"\n"), "agent.toml:5:", "sources[0].linger"),
            (format!("{SINK}[[sources]]\npaths = [\"/a/[b\"]\n"), "agent.toml:4:", "sources[0].paths"),
            ("[[sources]]\npaths = [\"/a\"]\n".to_owned(), "agent.toml", "sink.url"),
            (format!("{SINK}[defaults]\nretry = {{ initial = \"1s\", max = \"x\" }}\n[[sources]]\npaths = [\"/a\"]\n"), "agent.toml", "retry.max"),
            (format!("{SINK}[[sources]]\npaths = [\"/a\"]\nbatch_lines = \"many\"\n"), "agent.toml:5:", "invalid type"),
            (format!("{SINK}compression = \"lz4\"\n[[sources]]\npaths = [\"/a\"]\n"), "agent.toml:3:", "sink.compression"),
            (format!("{SINK}[[sources]]\npaths = [\"/a\"]\nmultiline = {{ start = \"(\" }}\n"), "agent.toml:5:", "sources[0].multiline.start"),
            (format!("{SINK}[[sources]]\npaths = [\"/a\"]\nmultiline = {{ start = \"a\", continue = \"b\" }}\n"), "agent.toml:5:", "sources[0].multiline"),
            (format!("{SINK}[[sources]]\npaths = [\"/a\"]\nbatch_lines = 10\nmultiline = {{ continue = \"^ \", max_lines = 11 }}\n"), "agent.toml:6:", "sources[0].multiline.max_lines"),
            (format!("{SINK}[[sources]]\ntype = \"journald\"\nmatches = [\"unit=x\"]\n"), "agent.toml:5:", "sources[0].matches"),
        ];
        for (text, at, key) in cases {
            let e = load(&text).expect_err(&text);
            assert!(
                e.contains(at) && e.contains(key),
                "{e:?} should contain {at:?} and {key:?}"
            );
        }
    }

    #[test]
    fn several_sinks_are_named_and_their_mistakes_name_the_entry_and_line() {
        let src = "[[sources]]\npaths = [\"/a\"]\n";
        let two = format!(
            "[[sinks]]\nurl = \"http://a:1/store/batch\"\n[[sinks]]\ntype = \"loki\"\nurl = \"http://b:2/loki/api/v1/push\"\nlabels = {{ job = \"x\" }}\n{src}"
        );
        let s = load(&two).unwrap();
        let names: Vec<&str> = s.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["aggregator", "loki"]);
        assert_eq!(s.sinks[1].labels, [("job".to_owned(), "x".to_owned())]);
        let cases = [
            (
                format!("[sink]\nurl = \"http://a:1/x\"\n{two}"),
                "sinks",
                "not both",
            ),
            (
                format!(
                    "[[sinks]]\nurl = \"http://a:1/x\"\n[[sinks]]\nurl = \"http://b:1/x\"\n{src}"
                ),
                "agent.toml:3: sinks[1]",
                "two sinks are named \"aggregator\"",
            ),
            (
                format!("[[sinks]]\nurl = \"http://a:1/x\"\n[[sinks]]\nurl = \"ftp://b/x\"\n{src}"),
                "agent.toml:4: sinks[1].url",
                "http://",
            ),
            (
                format!("[[sinks]]\nname = \"a/b\"\nurl = \"http://a:1/x\"\n{src}"),
                "agent.toml:2: sinks[0].name",
                "letters, digits",
            ),
        ];
        for (text, key, why) in cases {
            let e = load(&text).expect_err(&text);
            assert!(e.contains(key) && e.contains(why), "{text}\n→ {e}");
        }
    }

    #[test]
    fn sink_url_may_be_a_list_and_each_entry_is_checked() {
        let src = "[[sources]]\npaths = [\"/a\"]\n";
        let s = load(&format!(
            "[sink]\nurl = [\"http://a:1/store/batch\", \"http://b:2/store/batch\"]\n{src}"
        ))
        .expect("a list");
        assert_eq!(
            s.sinks[0].urls,
            ["http://a:1/store/batch", "http://b:2/store/batch"]
        );
        let s = load(&format!(
            "[sink]\nurl = \"http://a:1/store/batch, http://b:2/store/batch\"\n{src}"
        ))
        .expect("a comma list (what an AGENT_SINK__URL variable holds)");
        assert_eq!(s.sinks[0].urls.len(), 2);
        for (text, key) in [
            ("url = [\"http://a:1/x\", \"ftp://b/x\"]", "sink.url.1"),
            ("url = [\"http://a:1/x\", \"http://a:1/x\"]", "listed twice"),
            ("url = []", "no URL"),
        ] {
            let e = load(&format!("[sink]\n{text}\n{src}")).expect_err(text);
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn sources_inherit_defaults_and_override_them() {
        let s = load(&format!(
            "{SINK}[defaults]\nbatch_lines = 7\nlinger = \"1s\"\n[[sources]]\npaths = [\"/a/*.log\"]\n[[sources]]\npaths = [\"/b/**/*.log\"]\nbatch_lines = 9\n"
        ))
        .expect("valid");
        assert_eq!(s.sources[0].options.batch_lines, 7);
        assert_eq!(s.sources[1].options.batch_lines, 9);
        assert_eq!(s.sources[1].options.linger, Duration::from_secs(1));
        assert_eq!(s.sources[1].roots, vec![PathBuf::from("/b")]);
        assert!(s.sources[1].include.is_match("/b/x/y/z.log"));
        assert!(
            !s.sources[0].include.is_match("/a/x/z.log"),
            "* does not cross directories"
        );
    }

    #[test]
    fn relative_patterns_are_resolved_lexically() {
        assert_eq!(
            source::absolute_pattern(Path::new("/srv/conf"), "../logs/*.log"),
            "/srv/logs/*.log"
        );
        assert_eq!(
            source::absolute_pattern(Path::new("/srv/conf"), "./a/../b.log"),
            "/srv/conf/b.log"
        );
        assert_eq!(
            source::absolute_pattern(Path::new("/x"), "/abs/./c.log"),
            "/abs/c.log"
        );
    }

    #[test]
    fn literal_roots() {
        assert_eq!(literal_root("/var/log/app.log"), PathBuf::from("/var/log"));
        assert_eq!(literal_root("/var/log/*/x.log"), PathBuf::from("/var/log"));
        assert_eq!(literal_root("/srv/**/*.log"), PathBuf::from("/srv"));
    }
}
