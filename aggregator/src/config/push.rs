//! `[push]`: how Loki and OTLP pushes map onto host + file, and how much each stream
//! remembers to drop a resent batch. Every key reloads live.

use serde::{Deserialize, Serialize};

use super::{sz, ConfigError};

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Loki labels naming the host, first present wins.
    pub host_labels: Vec<String>,
    /// Loki labels naming the file, first present wins.
    pub file_labels: Vec<String>,
    /// OTLP resource (or record) attributes naming the host.
    pub otlp_host_attributes: Vec<String>,
    /// OTLP attributes naming the file.
    pub otlp_file_attributes: Vec<String>,
    /// OTLP resource attributes kept as labels beyond host and file (an SDK's resource holds
    /// many more, e.g. `telemetry.sdk.version`, which are not kept).
    pub otlp_labels: Vec<String>,
    /// Host of a stream whose labels name none; absent = the client's IP address.
    pub default_host: Option<String>,
    /// Lines per stream a resent push is compared with (exactly-once within this window).
    pub dedup_lines: usize,
    /// This aggregator's name in the generation its pushed lines go to on a shared (Redis)
    /// store, `push@<node>`: each node numbers its own lines. Absent = `<hostname>:<port of
    /// listen>`; set it when several aggregators on one host listen on port 0.
    pub node: Option<String>,
    /// Memory all streams' dedup windows may take together; past it the least recently
    /// pushed streams are forgotten (and read back from the store when they push again).
    pub dedup_memory: String,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            host_labels: names(&["host", "hostname", "instance"]),
            file_labels: names(&["filename", "file", "job", "service_name"]),
            otlp_host_attributes: names(&["host.name"]),
            otlp_file_attributes: names(&["log.file.path", "log.file.name", "service.name"]),
            otlp_labels: names(&[
                "service.name",
                "service.namespace",
                "deployment.environment",
                "k8s.namespace.name",
                "k8s.pod.name",
                "k8s.container.name",
            ]),
            default_host: None,
            node: None,
            dedup_lines: 10_000,
            dedup_memory: "64MiB".into(),
        }
    }
}

/// `[push]` validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSettings {
    pub host_labels: Vec<String>,
    pub file_labels: Vec<String>,
    pub otlp_host_attributes: Vec<String>,
    pub otlp_file_attributes: Vec<String>,
    pub otlp_labels: Vec<String>,
    pub default_host: Option<String>,
    pub node: Option<String>,
    pub dedup_lines: usize,
    pub dedup_memory: u64,
}

impl PushConfig {
    pub(super) fn validate(&self) -> Result<PushSettings, ConfigError> {
        if let Some(h) = &self.default_host {
            logship_wire::validate_names(h, "f", "g")
                .map_err(|e| ConfigError(format!("push.default_host: {e}")))?;
        }
        if let Some(n) = &self.node {
            logship_wire::validate_names("h", "f", &format!("push@{n}"))
                .map_err(|e| ConfigError(format!("push.node: {e}")))?;
        }
        if self.dedup_lines > 1_000_000 {
            return Err(ConfigError(
                "push.dedup_lines: at most 1000000 (each line costs ~32 bytes per stream)".into(),
            ));
        }
        Ok(PushSettings {
            host_labels: self.host_labels.clone(),
            file_labels: self.file_labels.clone(),
            otlp_host_attributes: self.otlp_host_attributes.clone(),
            otlp_file_attributes: self.otlp_file_attributes.clone(),
            otlp_labels: self.otlp_labels.clone(),
            default_host: self.default_host.clone(),
            node: self.node.clone(),
            dedup_lines: self.dedup_lines,
            dedup_memory: sz("push.dedup_memory", &self.dedup_memory)?,
        })
    }
}
