//! Which host and file a pushed stream's labels name.
//!
//! - host: the first of `host_keys` present and not empty; else `default_host` (the
//!   client's address unless configured).
//! - file: the first of `file_keys` present; else the remaining labels rendered as a label
//!   set (`{app="api"}`); else the protocol's name.
//! - labels beyond those two (all of them for Loki, `otlp_labels` for OTLP) are appended to
//!   the file name as a label set, `/var/log/app.log{env="prod"}`, so streams that differ only
//!   in them stay apart, and the query side reads them back from the name. The label that
//!   named the host or file stays in that set too unless it is one the query side shows
//!   under the same name (`host`, `host.name` → `host`; `filename`, `file`,
//!   `log.file.path`, `log.file.name` → `filename`): a stream pushed as `{job="api"}` is
//!   found again by `{job="api"}`.
//!
//! Names are made valid rather than refused (a stream is never the reason a whole push
//! fails): control characters are escaped, and a name too long is cut.

use logship_wire::push::render_labels;
use logship_wire::{MAX_FILE_BYTES, MAX_HOST_BYTES};

/// Labels the query side shows as `host` and `filename` under those very names.
const SHOWN_AS_HOST: [&str; 2] = ["host", "host.name"];
const SHOWN_AS_FILENAME: [&str; 4] = ["filename", "file", "log.file.path", "log.file.name"];

/// How one protocol's labels map (from `[push]`).
pub struct Mapping<'a> {
    pub host_keys: &'a [String],
    pub file_keys: &'a [String],
    /// Labels kept beyond host and file; `None` keeps all.
    pub keep: Option<&'a [String]>,
    pub default_host: &'a str,
    /// The file of a stream with no labels at all.
    pub fallback_file: &'static str,
}

impl Mapping<'_> {
    /// The (host, file) of a stream with `labels` (sorted by name).
    pub fn map(&self, labels: &[(String, String)]) -> (String, String) {
        let find = |keys: &[String]| {
            keys.iter().find_map(|k| {
                labels
                    .iter()
                    .position(|(name, v)| name == k && !v.is_empty())
            })
        };
        let host_at = find(self.host_keys);
        let file_at = find(self.file_keys);
        let host = host_at.map_or(self.default_host, |i| labels[i].1.as_str());
        // The labels that join the file name: those `keep` lists, and the one that named the
        // host or file unless the query side shows it under its own name anyway.
        let joins = |i: usize, name: &str| {
            if Some(i) == host_at {
                !SHOWN_AS_HOST.contains(&name)
            } else if Some(i) == file_at {
                !SHOWN_AS_FILENAME.contains(&name)
            } else {
                self.keep.is_none_or(|keep| keep.iter().any(|k| k == name))
            }
        };
        let rest: Vec<(String, String)> = labels
            .iter()
            .enumerate()
            .filter(|(i, (k, _))| joins(*i, k))
            .map(|(_, l)| l.clone())
            .collect();
        let file = match file_at {
            Some(i) if rest.is_empty() => labels[i].1.clone(),
            Some(i) => format!("{}{}", labels[i].1, render_labels(&rest)),
            None if rest.is_empty() => self.fallback_file.to_string(),
            None => render_labels(&rest),
        };
        (clean(host, MAX_HOST_BYTES), clean(&file, MAX_FILE_BYTES))
    }
}

/// `name` with control characters escaped (`\x07`), cut to `max` bytes, never empty.
fn clean(name: &str, max: usize) -> String {
    let mut out = String::with_capacity(name.len().min(max));
    for c in name.chars() {
        let piece = if c.is_control() {
            format!("\\x{:02x}", u32::from(c))
        } else {
            c.to_string()
        };
        if out.len() + piece.len() > max {
            break;
        }
        out.push_str(&piece);
    }
    if out.is_empty() {
        out.push('-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        v.sort();
        v
    }

    fn loki() -> (Vec<String>, Vec<String>) {
        (
            vec!["host".into(), "hostname".into(), "instance".into()],
            vec!["filename".into(), "file".into(), "job".into()],
        )
    }

    #[test]
    fn labels_map_to_host_file_and_the_rest_of_the_name() {
        let (h, f) = loki();
        let m = Mapping {
            host_keys: &h,
            file_keys: &f,
            keep: None,
            default_host: "10.0.0.9",
            fallback_file: "loki",
        };
        // Fluent Bit's loki output: host, job, filename.
        let fb = labels(&[
            ("host", "web-1"),
            ("job", "fluentbit"),
            ("filename", "/var/log/syslog"),
        ]);
        assert_eq!(
            m.map(&fb),
            ("web-1".into(), "/var/log/syslog{job=\"fluentbit\"}".into())
        );
        assert_eq!(
            m.map(&labels(&[("job", "api")])),
            ("10.0.0.9".into(), "api{job=\"api\"}".into()),
            "the label that named the file stays findable by its name"
        );
        assert_eq!(
            m.map(&labels(&[("app", "x"), ("env", "prod")])),
            ("10.0.0.9".into(), "{app=\"x\", env=\"prod\"}".into())
        );
        assert_eq!(m.map(&[]), ("10.0.0.9".into(), "loki".into()));
        let odd = labels(&[("host", "a\u{7}b"), ("filename", &"x".repeat(5000))]);
        let (host, file) = m.map(&odd);
        assert_eq!(host, "a\\x07b");
        assert_eq!(file.len(), MAX_FILE_BYTES);
        logship_wire::validate_names(&host, &file, "g").expect("valid names");
    }

    #[test]
    fn only_kept_labels_join_the_name() {
        let keep = vec!["service.namespace".to_string()];
        let m = Mapping {
            host_keys: &["host.name".to_string()],
            file_keys: &["log.file.path".to_string(), "service.name".to_string()],
            keep: Some(&keep),
            default_host: "h",
            fallback_file: "otlp",
        };
        let l = labels(&[
            ("host.name", "web-1"),
            ("service.name", "api"),
            ("service.namespace", "shop"),
            ("telemetry.sdk.version", "1.2"),
        ]);
        assert_eq!(
            m.map(&l),
            (
                "web-1".into(),
                "api{service.name=\"api\", service.namespace=\"shop\"}".into()
            )
        );
    }
}
