//! Aggregator configuration: serde types with named defaults, layered by the shared loader
//! ([`logship_common::config`]: TOML file, then `AGGREGATOR_*` environment typed by key,
//! then CLI flags), then validated into [`Settings`] with parsed durations, sizes, tokens and
//! TLS material. Errors name the key and where it was set.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use logship_common::config::{resolve, Secret, Validate};
use logship_common::units;
use serde::{Deserialize, Serialize};

use crate::store::RetentionPolicy;

mod push;
pub use push::{PushConfig, PushSettings};

/// The file's shape, as written by the operator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to serve HTTP on.
    pub listen: String,
    /// What this process serves: "all" (default), "ingest" (`POST /store/batch`) or
    /// "query" (the read API, follow, the page). Split roles need a shared store (redis).
    pub role: String,
    /// Where the embedded sled database lives.
    pub data_dir: PathBuf,
    /// Largest request body accepted, compressed, as sent on the wire.
    pub max_body_bytes: String,
    /// Largest request body after decompression: the guard against compression bombs.
    pub max_decoded_bytes: String,
    /// Concurrent connections served; at the cap an idle keep-alive one is closed to make
    /// room, and when none is idle a new connection gets 503 and is closed.
    pub max_connections: usize,
    /// A client must send its request headers within this time (slowloris guard).
    pub header_read_timeout: String,
    /// A client must send its whole body within this time.
    pub body_read_timeout: String,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_timeout: String,
    /// Most concurrent `follow=true` downloads.
    pub max_followers: usize,
    /// `"text"` or `"json"` (one object per line, for a log pipeline).
    pub log_format: String,
    /// Log filter when `RUST_LOG` is not set, e.g. `"info"`.
    pub log_level: Option<String>,
    /// Most concurrent plain downloads (`GET /store/log` without follow): with followers,
    /// a budget of its own, so readers can never take every connection from ingest.
    pub max_downloads: usize,
    /// Most connections from one client address; past it the client gets 503, so one
    /// client cannot fill `max_connections`.
    pub max_connections_per_client: usize,
    /// After `body_grace`, a request body must keep arriving at this average rate (slow
    /// bodies that hold connections are cut off with 408).
    pub min_body_bytes_per_sec: String,
    pub body_grace: String,
    /// Threads serving connections (async workers); absent = half the cores, at least one.
    /// Merges, decoding and commits run on threads of their own beside them.
    pub worker_threads: Option<usize>,
    /// Whether `POST /store/batch` takes the multi-file form (`LSB2`) and says so
    /// (`X-Logship-Accept`); off, the aggregator answers as one older than that form does,
    /// and agents fall back to one file per request.
    pub multi_file_bodies: bool,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub limits: LimitsConfig,
    /// Loki and OTLP pushes (`/loki/api/v1/push`, `/v1/logs`).
    pub push: PushConfig,
    pub search: SearchConfig,
    pub store: StoreConfig,
}

/// `[search]`: what `GET /store/search` may cost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Searches running at once; past it, 503 + Retry-After.
    pub max_searches: usize,
    /// A search stops after this long and says so in its summary.
    pub timeout: String,
    /// The largest `limit` a search may ask for (matches returned).
    pub max_limit: u64,
    /// The largest `context` (lines before and after each match).
    pub max_context: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            max_searches: 4,
            timeout: "30s".into(),
            max_limit: 100_000,
            max_context: 20,
        }
    }
}

/// `[tls]`: serve HTTPS instead of plain HTTP when `cert_file` and `key_file` are set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's own first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates; when set, clients must present a certificate it signed (mTLS).
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Bearer tokens allowed to `POST /store/batch`; none = open.
    pub write_tokens: Vec<String>,
    /// Bearer tokens allowed to read `/store/*`; none = open.
    pub read_tokens: Vec<String>,
    /// A file of write tokens, one per line (`#` comments), added to `write_tokens`; re-read
    /// on SIGHUP, so tokens rotate without editing the config.
    pub write_tokens_file: Option<PathBuf>,
    /// A file of read tokens, as `write_tokens_file`.
    pub read_tokens_file: Option<PathBuf>,
}

/// What one request, and all requests together, may cost. Past a per-request limit the
/// answer is 413, which the agent answers by splitting the batch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Lines per second each host may ingest; 0 = unlimited.
    pub per_host_lines_per_sec: u32,
    /// Longest line stored (the agent's default `max_line_bytes` too); longer → 413.
    pub max_line_bytes: String,
    /// Lines in one request.
    pub max_lines_per_request: usize,
    /// Distinct groups of 128 line numbers one request may touch: what a write costs the
    /// store, which sparse line numbers make far more than the line count says.
    pub max_buckets_per_request: usize,
    /// Distinct files (host, file, generation) in one request.
    pub max_files_per_request: usize,
    /// Distinct hosts in one request.
    pub max_hosts_per_request: usize,
    /// Memory all requests being read, decompressed and decoded may hold together; a
    /// request that finds it spent waits up to `ingest_memory_wait`, then gets 503.
    pub ingest_memory: String,
    /// How long a request waits for its share of `ingest_memory`.
    pub ingest_memory_wait: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            per_host_lines_per_sec: 0,
            max_line_bytes: "1MiB".into(),
            max_lines_per_request: 100_000,
            max_buckets_per_request: 2_048,
            max_files_per_request: 1_000,
            max_hosts_per_request: 100,
            ingest_memory: "512MiB".into(),
            ingest_memory_wait: "2s".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Backend: "sled" (embedded, the default) or "redis" (a Redis Cluster or one server,
    /// shared by several aggregators).
    #[serde(rename = "type")]
    pub kind: String,
    /// redis: seed nodes, `redis://host:port`.
    pub nodes: Vec<String>,
    /// redis: ACL user and password (or `password_file`).
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// redis: replicas that must have a write before it is acknowledged (`WAIT`); 0 = the
    /// primary's AOF only.
    pub wait_replicas: u32,
    /// redis: how long `WAIT` may take; past it the batch is refused with 503 and resent.
    pub wait_timeout: String,
    /// redis: bound on every store call; past it the request gets 503.
    pub timeout: String,
    /// redis: prefix of every key (no braces), so deployments can share a cluster.
    pub key_prefix: String,
    /// Memory the sled index cache may take (RSS; sled itself is given a third, as it counts
    /// pages at their on-disk size).
    pub cache_capacity: String,
    /// Drop generations not written for this long.
    pub retention: Option<String>,
    /// Past this size on disk, drop the least recently written generations.
    pub max_disk_bytes: Option<String>,
    /// How often retention is enforced and garbage compacted.
    pub sweep_interval: String,
    /// sled: how long a file must be quiet before its last lines are sealed into a
    /// compressed block (a block's worth of lines is sealed at once).
    pub seal_after: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: "sled".into(),
            nodes: Vec::new(),
            username: None,
            password: None,
            password_file: None,
            wait_replicas: 0,
            wait_timeout: "1s".into(),
            timeout: "5s".into(),
            key_prefix: "logship".into(),
            cache_capacity: "16MiB".into(),
            retention: None,
            max_disk_bytes: None,
            sweep_interval: "1m".into(),
            seal_after: "30s".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:3000".into(),
            role: "all".into(),
            data_dir: PathBuf::from("./data"),
            max_body_bytes: "16MiB".into(),
            max_decoded_bytes: "64MiB".into(),
            max_connections: 1024,
            header_read_timeout: "10s".into(),
            body_read_timeout: "60s".into(),
            shutdown_timeout: "10s".into(),
            max_followers: 256,
            log_format: "text".into(),
            log_level: None,
            max_downloads: 256,
            max_connections_per_client: 128,
            min_body_bytes_per_sec: "16KiB".into(),
            body_grace: "5s".into(),
            worker_threads: None,
            multi_file_bodies: true,
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            search: SearchConfig::default(),
            limits: LimitsConfig::default(),
            push: PushConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

/// The most connections or followers a config may ask for.
const MAX_COUNT: usize = 1_000_000;
/// The most async worker threads a config may ask for (each has a stack and a queue).
const MAX_WORKER_THREADS: usize = 1_024;
/// The longest `limits.max_line_bytes`: 128 such lines still fit a bucket's u32 length.
const MAX_LINE_BYTES: u64 = 16 << 20;

fn sz(key: &str, s: &str) -> Result<u64, ConfigError> {
    units::size(key, s).map_err(ConfigError)
}

fn dur(key: &str, s: &str) -> Result<Duration, ConfigError> {
    units::duration(key, s).map_err(ConfigError)
}

/// Validated runtime settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub role: Role,
    /// The store to open.
    pub backend: Backend,
    pub data_dir: PathBuf,
    pub max_body_bytes: u64,
    pub max_decoded_bytes: u64,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub max_followers: usize,
    pub multi_file_bodies: bool,
    pub log_format: logship_common::LogFormat,
    pub log_level: Option<String>,
    pub max_downloads: usize,
    pub max_connections_per_client: usize,
    pub min_body_bytes_per_sec: u64,
    pub body_grace: Duration,
    /// Async worker threads (`worker_threads`, or half the cores).
    pub worker_threads: usize,
    pub write_tokens: Vec<Secret>,
    pub read_tokens: Vec<Secret>,
    /// HTTPS when set.
    pub tls: Option<crate::tls::ServerTls>,
    pub max_searches: usize,
    pub search_timeout: Duration,
    pub search_max_limit: u64,
    pub search_max_context: u64,
    pub per_host_lines_per_sec: u32,
    /// Per-request decode limits (`[limits]`).
    pub decode_limits: logship_wire::Limits,
    pub max_buckets_per_request: usize,
    pub ingest_memory: u64,
    pub ingest_memory_wait: Duration,
    pub cache_capacity: u64,
    pub retention: RetentionPolicy,
    pub sweep_interval: Duration,
    pub seal_after: Duration,
    /// `[push]`.
    pub push: PushSettings,
    /// Each key's value hashed: what a reload changed, and which configuration runs.
    pub fingerprint: logship_common::config::Fingerprint,
}

pub use logship_common::ConfigError;

/// Overrides from the command line; `None` leaves the lower layers in force.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// What one aggregator process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    All,
    Ingest,
    Query,
}

impl Role {
    pub fn ingests(self) -> bool {
        self != Role::Query
    }
    pub fn queries(self) -> bool {
        self != Role::Ingest
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Ingest => "ingest",
            Role::Query => "query",
        }
    }
}

/// The store a config asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    Sled,
    Redis(crate::store::RedisOptions),
}

/// The loaded config and where each value came from (for error messages).
pub type Loaded = logship_common::config::Loaded<Config>;

impl Validate for Config {
    type Settings = Settings;
    fn validate(&self, base: &Path) -> Result<Settings, (String, String)> {
        self.validate_in(base)
            .map_err(|e| match e.0.split_once(": ") {
                Some((key, msg)) if !key.contains(' ') => (key.to_owned(), msg.to_owned()),
                _ => (String::new(), e.0),
            })
    }
}

impl Config {
    /// Layers defaults, the TOML file (if any), `AGGREGATOR_*` variables and flags.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Loaded, ConfigError> {
        Loaded::load(file, "AGGREGATOR_", overrides)
    }

    /// Validates with relative paths taken from the working directory.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        self.validate_in(Path::new("."))
    }

    /// Parses durations, sizes, addresses, token files and TLS material; relative paths are
    /// taken from `base`. Every error starts with its dotted key.
    fn validate_in(&self, base: &Path) -> Result<Settings, ConfigError> {
        let (write_tokens, read_tokens) = self.tokens(base)?;
        let tls = self.server_tls(base)?;
        let (role, backend) = self.role_and_backend(base)?;
        self.check_counts()?;
        let worker_threads = self.worker_threads()?;
        let sweep_interval = dur("store.sweep_interval", &self.store.sweep_interval)?;
        if sweep_interval.is_zero() {
            return Err(ConfigError(
                "store.sweep_interval: must be more than 0".into(),
            ));
        }
        let seal_after = dur("store.seal_after", &self.store.seal_after)?;
        if seal_after.is_zero() {
            return Err(ConfigError("store.seal_after: must be more than 0".into()));
        }
        let (max_line_bytes, ingest_memory) = self.request_limits()?;
        Ok(Settings {
            fingerprint: logship_common::config::Fingerprint::of(self)?,
            role,
            backend,
            listen: self.listen.parse().map_err(|e| {
                ConfigError(format!("listen: {:?} is not an address: {e}", self.listen))
            })?,
            data_dir: self.data_dir.clone(),
            max_body_bytes: sz("max_body_bytes", &self.max_body_bytes)?,
            max_decoded_bytes: sz("max_decoded_bytes", &self.max_decoded_bytes)?,
            max_connections: self.max_connections.max(1),
            header_read_timeout: dur("header_read_timeout", &self.header_read_timeout)?,
            body_read_timeout: dur("body_read_timeout", &self.body_read_timeout)?,
            shutdown_timeout: dur("shutdown_timeout", &self.shutdown_timeout)?,
            max_followers: self.max_followers,
            multi_file_bodies: self.multi_file_bodies,
            log_format: logship_common::LogFormat::parse("log_format", &self.log_format)?,
            log_level: self.log_level.clone(),
            max_downloads: self.max_downloads,
            max_connections_per_client: self.max_connections_per_client.max(1),
            min_body_bytes_per_sec: sz("min_body_bytes_per_sec", &self.min_body_bytes_per_sec)?,
            body_grace: dur("body_grace", &self.body_grace)?,
            worker_threads,
            write_tokens,
            read_tokens,
            tls,
            max_searches: self.search.max_searches,
            search_timeout: dur("search.timeout", &self.search.timeout)?,
            search_max_limit: self.search.max_limit.max(1),
            search_max_context: self.search.max_context.min(1_000),
            per_host_lines_per_sec: self.limits.per_host_lines_per_sec,
            decode_limits: logship_wire::Limits {
                max_lines: self.limits.max_lines_per_request,
                max_line_bytes: max_line_bytes as usize,
                max_files: self.limits.max_files_per_request,
                max_hosts: self.limits.max_hosts_per_request,
            },
            max_buckets_per_request: self.limits.max_buckets_per_request,
            push: self.push.validate()?,
            ingest_memory,
            ingest_memory_wait: dur("limits.ingest_memory_wait", &self.limits.ingest_memory_wait)?,
            cache_capacity: sz("store.cache_capacity", &self.store.cache_capacity)?,
            retention: RetentionPolicy {
                retention: self
                    .store
                    .retention
                    .as_deref()
                    .map(|r| dur("store.retention", r))
                    .transpose()?,
                max_disk_bytes: self
                    .store
                    .max_disk_bytes
                    .as_deref()
                    .map(|m| sz("store.max_disk_bytes", m))
                    .transpose()?,
            },
            sweep_interval,
            seal_after,
        })
    }
}

impl Config {
    /// `[auth]`: the write and read tokens, inline and from their files.
    fn tokens(&self, base: &Path) -> Result<(Vec<Secret>, Vec<Secret>), ConfigError> {
        let keyed = |(key, msg): (String, String)| ConfigError(format!("{key}: {msg}"));
        let tokens = |inline: &[String], file: &Option<PathBuf>, key: &str| {
            let mut all: Vec<Secret> = inline.iter().cloned().map(Secret::new).collect();
            if let Some(f) = file {
                all.extend(
                    logship_common::config::read_tokens(key, &resolve(base, f)).map_err(keyed)?,
                );
            }
            Ok::<_, ConfigError>(all)
        };
        Ok((
            tokens(
                &self.auth.write_tokens,
                &self.auth.write_tokens_file,
                "auth.write_tokens_file",
            )?,
            tokens(
                &self.auth.read_tokens,
                &self.auth.read_tokens_file,
                "auth.read_tokens_file",
            )?,
        ))
    }

    /// `[tls]`: the server certificate and key, and the client CA for mutual TLS.
    fn server_tls(&self, base: &Path) -> Result<Option<crate::tls::ServerTls>, ConfigError> {
        let keyed = |(key, msg): (String, String)| ConfigError(format!("{key}: {msg}"));
        let client_ca = self.tls.client_ca_file.as_deref().map(|p| resolve(base, p));
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(c), Some(k)) => Ok(Some(
                crate::tls::ServerTls::load(
                    &resolve(base, c),
                    &resolve(base, k),
                    client_ca.as_deref(),
                )
                .map_err(keyed)?,
            )),
            (None, None) if self.tls.client_ca_file.is_some() => Err(ConfigError(
                "tls.client_ca_file: needs tls.cert_file and tls.key_file".into(),
            )),
            (None, None) => Ok(None),
            (Some(_), None) => Err(ConfigError(
                "tls.key_file: required with tls.cert_file".into(),
            )),
            (None, Some(_)) => Err(ConfigError(
                "tls.cert_file: required with tls.key_file".into(),
            )),
        }
    }

    /// `role` and `[store]`: a split role needs a shared store.
    fn role_and_backend(&self, base: &Path) -> Result<(Role, Backend), ConfigError> {
        let role = match self.role.as_str() {
            "all" => Role::All,
            "ingest" => Role::Ingest,
            "query" => Role::Query,
            other => {
                return Err(ConfigError(format!(
                    "role: unknown role {other:?} (available: \"all\", \"ingest\", \"query\")"
                )))
            }
        };
        let backend = self.backend(base)?;
        if matches!(backend, Backend::Sled) && role != Role::All {
            return Err(ConfigError(format!(
                "role: {:?} needs a shared store: with store.type = \"sled\" one process holds \
                 the data, so it must serve both (role = \"all\"); use store.type = \"redis\"",
                self.role
            )));
        }
        Ok((role, backend))
    }

    /// Capacities that become semaphores, which cannot hold more than a few quintillion
    /// permits; a million is far past what one process serves.
    fn check_counts(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("max_connections", self.max_connections),
            ("max_followers", self.max_followers),
            ("max_downloads", self.max_downloads),
            ("search.max_searches", self.search.max_searches),
            (
                "max_connections_per_client",
                self.max_connections_per_client,
            ),
        ] {
            if value > MAX_COUNT {
                return Err(ConfigError(format!(
                    "{key}: {value} is more than the {MAX_COUNT} allowed"
                )));
            }
        }
        Ok(())
    }

    fn worker_threads(&self) -> Result<usize, ConfigError> {
        match self.worker_threads {
            None => Ok(logship_common::default_worker_threads()),
            Some(n) if (1..=MAX_WORKER_THREADS).contains(&n) => Ok(n),
            Some(n) => Err(ConfigError(format!(
                "worker_threads: {n} must be between 1 and {MAX_WORKER_THREADS} \
                 (or absent: half the cores)"
            ))),
        }
    }

    /// `[limits]` of one request: the longest line, the per-request counts, and the ingest
    /// memory budget.
    fn request_limits(&self) -> Result<(u64, u64), ConfigError> {
        let max_line_bytes = sz("limits.max_line_bytes", &self.limits.max_line_bytes)?;
        // A bucket holds 128 lines and its stored length is a u32.
        if max_line_bytes == 0 || max_line_bytes > MAX_LINE_BYTES {
            return Err(ConfigError(format!(
                "limits.max_line_bytes: must be between 1 byte and {} MiB",
                MAX_LINE_BYTES >> 20
            )));
        }
        for (key, value) in [
            (
                "limits.max_lines_per_request",
                self.limits.max_lines_per_request,
            ),
            (
                "limits.max_buckets_per_request",
                self.limits.max_buckets_per_request,
            ),
            (
                "limits.max_files_per_request",
                self.limits.max_files_per_request,
            ),
            (
                "limits.max_hosts_per_request",
                self.limits.max_hosts_per_request,
            ),
        ] {
            if value == 0 || value > MAX_COUNT {
                return Err(ConfigError(format!(
                    "{key}: {value} must be between 1 and {MAX_COUNT}"
                )));
            }
        }
        let ingest_memory = sz("limits.ingest_memory", &self.limits.ingest_memory)?;
        if ingest_memory < 1 << 20 {
            return Err(ConfigError(
                "limits.ingest_memory: at least 1MiB is needed to take any request".into(),
            ));
        }
        Ok((max_line_bytes, ingest_memory))
    }

    /// Validates the `[store]` backend keys.
    fn backend(&self, base: &Path) -> Result<Backend, ConfigError> {
        let st = &self.store;
        match st.kind.as_str() {
            "sled" => Ok(Backend::Sled),
            "redis" => {
                if st.nodes.is_empty() {
                    return Err(ConfigError(
                        "store.nodes: required with store.type = \"redis\" \
                         (e.g. [\"redis://127.0.0.1:7000\"])"
                            .into(),
                    ));
                }
                for (i, n) in st.nodes.iter().enumerate() {
                    if !(n.starts_with("redis://") || n.starts_with("rediss://"))
                        || redis_node_info(n).is_err()
                    {
                        return Err(ConfigError(format!(
                            "store.nodes.{i}: {n:?} is not a redis://host:port URL"
                        )));
                    }
                }
                if st.key_prefix.is_empty() || st.key_prefix.contains(['{', '}']) {
                    return Err(ConfigError(
                        "store.key_prefix: must be non-empty and contain no braces (they \
                         would change which cluster slot keys map to)"
                            .into(),
                    ));
                }
                let password = match (&st.password, &st.password_file) {
                    (Some(_), Some(_)) => {
                        return Err(ConfigError(
                            "store.password_file: set either store.password or \
                             store.password_file, not both"
                                .into(),
                        ))
                    }
                    (Some(p), None) => Some(p.clone()),
                    (None, Some(f)) => {
                        let path = resolve(base, f);
                        let text = std::fs::read_to_string(&path).map_err(|e| {
                            ConfigError(format!(
                                "store.password_file: cannot read {}: {e}",
                                path.display()
                            ))
                        })?;
                        Some(text.trim().to_owned())
                    }
                    (None, None) => None,
                };
                let timeout = dur("store.timeout", &st.timeout)?;
                if timeout.is_zero() {
                    return Err(ConfigError("store.timeout: must be more than 0".into()));
                }
                let wait_timeout = dur("store.wait_timeout", &st.wait_timeout)?;
                if st.wait_replicas > 0 && wait_timeout.is_zero() {
                    return Err(ConfigError(
                        "store.wait_timeout: must be more than 0 when store.wait_replicas > 0 \
                         (WAIT 0 would wait forever)"
                            .into(),
                    ));
                }
                if st.wait_replicas > 16 {
                    return Err(ConfigError(format!(
                        "store.wait_replicas: {} is more replicas than any cluster keeps",
                        st.wait_replicas
                    )));
                }
                Ok(Backend::Redis(crate::store::RedisOptions {
                    nodes: st.nodes.clone(),
                    username: st.username.clone(),
                    password,
                    wait_replicas: st.wait_replicas,
                    wait_timeout,
                    timeout,
                    key_prefix: st.key_prefix.clone(),
                }))
            }
            other => Err(ConfigError(format!(
                "store.type: unknown store {other:?} (available: \"sled\", \"redis\")"
            ))),
        }
    }
}

fn redis_node_info(url: &str) -> Result<(), ()> {
    let rest = url.split_once("://").map(|(_, r)| r).ok_or(())?;
    let hostport = rest
        .rsplit('@')
        .next()
        .ok_or(())?
        .split('/')
        .next()
        .ok_or(())?;
    let (host, port) = hostport.rsplit_once(':').ok_or(())?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "listen = \"127.0.0.1:0\"\nmax_bodybytes = \"1MiB\"\n").expect("write");
        let e = Config::load(Some(&p), &Overrides::default())
            .expect_err("typo")
            .to_string();
        assert!(e.contains(":2:") && e.contains("max_bodybytes"), "{e}");
        std::fs::write(&p, "header_read_timeout = \"ten\"\n").expect("write");
        let c = Config::load(Some(&p), &Overrides::default()).expect("loads");
        let e = c.validate().expect_err("bad duration").to_string();
        assert!(e.contains("header_read_timeout"), "{e}");
        for (text, key) in [
            ("[store]\nretention = \"forever\"\n", "store.retention"),
            (
                "[store]\nmax_disk_bytes = \"lots\"\n",
                "store.max_disk_bytes",
            ),
            ("[store]\nsweep_interval = \"0s\"\n", "store.sweep_interval"),
            ("[store]\nseal_after = \"0s\"\n", "store.seal_after"),
            ("max_connections = 9223372036854775807\n", "max_connections"),
            ("max_followers = 2000000\n", "max_followers"),
            ("worker_threads = 0\n", "worker_threads"),
            ("worker_threads = 5000\n", "worker_threads"),
            (
                "[limits]\nmax_line_bytes = \"1GiB\"\n",
                "limits.max_line_bytes",
            ),
            (
                "[limits]\nmax_lines_per_request = 0\n",
                "limits.max_lines_per_request",
            ),
            (
                "[limits]\ningest_memory = \"1KiB\"\n",
                "limits.ingest_memory",
            ),
        ] {
            std::fs::write(&p, text).expect("write");
            let c = Config::load(Some(&p), &Overrides::default()).expect("loads");
            let e = c.validate().expect_err(key).to_string();
            assert!(e.contains(key), "{e}");
        }
        std::fs::write(
            &p,
            "[store]\nretention = \"7d\"\nmax_disk_bytes = \"10GiB\"\n",
        )
        .expect("write");
        let s = Config::load(Some(&p), &Overrides::default())
            .expect("loads")
            .validate()
            .expect("valid");
        assert_eq!(s.retention.retention, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(s.retention.max_disk_bytes, Some(10 << 30));
    }

    #[test]
    fn redis_store_and_role_keys_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.toml");
        let redis = "[store]\ntype = \"redis\"\nnodes = [\"redis://127.0.0.1:7000\"]\n";
        for (text, needle) in [
            ("role = \"both\"\n".to_owned(), "role: unknown role"),
            ("role = \"query\"\n".to_owned(), "needs a shared store"),
            (
                "[store]\ntype = \"redis\"\n".to_owned(),
                "store.nodes: required",
            ),
            (
                "[store]\ntype = \"redis\"\nnodes = [\"127.0.0.1:7000\"]\n".to_owned(),
                "store.nodes.0",
            ),
            (
                format!("{redis}key_prefix = \"a{{b}}\"\n"),
                "store.key_prefix",
            ),
            (
                format!("{redis}wait_replicas = 1\nwait_timeout = \"0s\"\n"),
                "store.wait_timeout",
            ),
            (
                format!("{redis}password = \"x\"\npassword_file = \"p\"\n"),
                "store.password_file",
            ),
            ("[store]\ntype = \"mongo\"\n".to_owned(), "store.type"),
        ] {
            std::fs::write(&p, &text).expect("write");
            let c = Config::load(Some(&p), &Overrides::default()).expect("loads");
            let e = c.validate().expect_err(&text).to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
        std::fs::write(&p, format!("role = \"ingest\"\n{redis}wait_replicas = 1\n"))
            .expect("write");
        let s = Config::load(Some(&p), &Overrides::default())
            .expect("loads")
            .validate()
            .expect("valid");
        assert_eq!(s.role, Role::Ingest);
        match s.backend {
            Backend::Redis(o) => {
                assert_eq!(o.wait_replicas, 1);
                assert_eq!(o.key_prefix, "logship");
            }
            Backend::Sled => panic!("expected the redis backend"),
        }
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.toml");
        std::fs::write(
            &p,
            "listen = \"127.0.0.1:1\"\n[limits]\nper_host_lines_per_sec = 5\n",
        )
        .expect("write");
        let o = Overrides {
            listen: Some("127.0.0.1:2".into()),
            ..Overrides::default()
        };
        let s = Config::load(Some(&p), &o)
            .expect("loads")
            .validate()
            .expect("valid");
        assert_eq!(s.listen.port(), 2);
        assert_eq!(s.per_host_lines_per_sec, 5);
    }

    #[test]
    fn worker_threads_default_to_half_the_cores_and_can_be_named() {
        let s = Config::default().validate().expect("defaults are valid");
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        assert_eq!(s.worker_threads, cores.div_ceil(2));
        let c = Config {
            worker_threads: Some(3),
            ..Config::default()
        };
        assert_eq!(c.validate().expect("valid").worker_threads, 3);
    }
}
