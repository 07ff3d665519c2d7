//! `docs/CONFIG.md` lists every configuration key of both binaries, and nothing else: the
//! keys are read from the binaries themselves (each table is probed with an unknown key, and
//! the error lists the table's keys), so a key added without its row — or a row left for a
//! key that is gone — fails here (issue 31.8).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use logship_e2e::*;

const PROBE: &str = "__probe__";

/// What `binary --check-config` says of `toml`.
fn said(binary: &str, dir: &Path, toml: &str) -> String {
    let cfg = dir.join("probe.toml");
    std::fs::write(&cfg, toml).expect("write probe");
    let (_, out, err) = run_bin(
        binary,
        &["--config", &cfg.display().to_string(), "--check-config"],
        &[],
        Duration::from_secs(30),
    );
    format!("{out}{err}")
}

/// The keys an "unknown field `__probe__`, expected one of `a`, `b`" error lists, or `None`
/// when the probe did not land in a table.
fn listed(message: &str) -> Option<Vec<String>> {
    let at = message.find(&format!("unknown field `{PROBE}`"))?;
    let rest = &message[at..];
    let expected = &rest[rest.find("expected")?..];
    let expected = &expected[..expected.find(" (in ").unwrap_or(expected.len())];
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

/// Every key of `binary`'s configuration, dotted (`sink.url`, `sources[].retry.max`).
fn keys(binary: &str) -> BTreeSet<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut out = BTreeSet::new();
    // (dotted prefix, the TOML header lines that open that table)
    let mut tables: Vec<(String, String)> = vec![(String::new(), String::new())];
    while let Some((prefix, header)) = tables.pop() {
        let text = said(binary, dir.path(), &format!("{header}{PROBE} = 1\n"));
        let Some(names) = listed(&text) else {
            panic!("{binary}: probing {prefix:?} said: {text}");
        };
        for name in names {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            // The TOML path of this key's own table (arrays of tables are written `[[a]]`).
            let toml_path = header
                .lines()
                .last()
                .map(|h| h.trim_matches(['[', ']']).to_owned())
                .filter(|h| !h.is_empty())
                .map_or(name.clone(), |h| format!("{h}.{name}"));
            let as_table = format!("{header}[{toml_path}]\n");
            if listed(&said(
                binary,
                dir.path(),
                &format!("{as_table}{PROBE} = 1\n"),
            ))
            .is_some()
            {
                tables.push((key, as_table));
                continue;
            }
            let as_array = format!("{header}[[{toml_path}]]\n");
            if listed(&said(
                binary,
                dir.path(),
                &format!("{as_array}{PROBE} = 1\n"),
            ))
            .is_some()
            {
                tables.push((format!("{key}[]"), as_array));
                continue;
            }
            out.insert(key);
        }
    }
    out
}

/// The keys `docs/CONFIG.md` documents for `binary`: every backticked key in the first cell
/// of each table row under its `## binary` heading (a row may name a source option under both
/// `sources[].` and `defaults.`).
fn documented(binary: &str) -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/CONFIG.md")).expect("docs/CONFIG.md");
    let mut section = "";
    let mut out = BTreeSet::new();
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.split_whitespace().next().unwrap_or("");
        } else if section == binary && line.starts_with("| `") {
            let cell = line.split('|').nth(1).unwrap_or("");
            out.extend(cell.split('`').skip(1).step_by(2).map(str::to_owned));
        }
    }
    out
}

fn check(binary: &str) {
    let keys = keys(binary);
    assert!(
        keys.len() > 20,
        "{binary}: only {} keys found: {keys:?}",
        keys.len()
    );
    let documented = documented(binary);
    let missing: Vec<_> = keys.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&keys).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/CONFIG.md, ## {binary}: keys without a row: {missing:?}; rows for no key: {stale:?}"
    );
}

#[test]
fn every_agent_key_has_a_row_in_the_reference() {
    check("agent");
}

#[test]
fn every_aggregator_key_has_a_row_in_the_reference() {
    check("aggregator");
}
