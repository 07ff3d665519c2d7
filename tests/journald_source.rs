//! Issue 34.5: the `journald` source, tested with real journal files: Debian's
//! `systemd-journal-remote` writes them from export-format input (no running journald
//! needed), and the agent reads them with `journalctl --directory`. One stream per unit,
//! `MESSAGE` exact (binary, with newlines), `matches`, and the cursor as the checkpoint:
//! restarts by SIGTERM and by kill -9 resume with nothing lost and nothing twice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use logship_e2e::*;

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// An entry of unit `unit` with `message`, in journal export format.
fn entry(out: &mut Vec<u8>, seq: u64, unit: &str, message: &[u8]) {
    out.extend_from_slice(
        format!(
            "__CURSOR=s=0;i={seq}\n__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={seq}\n_BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME=web-1\n_SYSTEMD_UNIT={unit}\n",
            1_790_000_000_000_000u64 + seq * 1000
        )
        .as_bytes(),
    );
    if message.contains(&b'\n') || std::str::from_utf8(message).is_err() {
        out.extend_from_slice(b"MESSAGE\n");
        out.extend_from_slice(&(message.len() as u64).to_le_bytes());
        out.extend_from_slice(message);
        out.push(b'\n');
    } else {
        out.extend_from_slice(b"MESSAGE=");
        out.extend_from_slice(message);
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Writes `entries` (seq, unit, message) as the journal file `dir/name.journal`.
fn journal_file(dir: &Path, name: &str, entries: &[(u64, &str, Vec<u8>)]) {
    let mut export = Vec::new();
    for (seq, unit, msg) in entries {
        entry(&mut export, *seq, unit, msg);
    }
    let input = dir.with_extension(format!("{name}.export"));
    std::fs::write(&input, &export).expect("write export");
    let status = std::process::Command::new(JOURNAL_REMOTE)
        .arg(format!(
            "--output={}",
            dir.join(format!("{name}.journal")).display()
        ))
        .arg(&input)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run systemd-journal-remote (apt-get install systemd-journal-remote)");
    assert!(status.success(), "systemd-journal-remote failed");
}

/// The expected download of a unit's stream: each message and `\n`.
fn expected(entries: &[(u64, &str, Vec<u8>)], unit: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (_, u, m) in entries {
        if *u == unit {
            out.extend_from_slice(m);
            out.push(b'\n');
        }
    }
    out
}

fn config(dir: &Path, agg: &Aggregator, journal: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "host = \"h\"\nstate_dir = {:?}\ncheckpoint_interval = \"100ms\"\n[sink]\nurl = {:?}\n[defaults]\nlinger = \"50ms\"\nretry = {{ initial = \"20ms\", max = \"300ms\" }}\n[[sources]]\ntype = \"journald\"\ndirectory = {:?}\n{extra}\n",
        dir.join("state").to_string_lossy(),
        agg.url("/store/batch"),
        journal.to_string_lossy(),
    );
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).expect("write agent config");
    p
}

fn batch(from: u64, n: u64) -> Vec<(u64, &'static str, Vec<u8>)> {
    (from..from + n)
        .map(|i| {
            let unit = if i % 3 == 0 {
                "sshd.service"
            } else {
                "nginx.service"
            };
            let msg = match i % 10 {
                // Binary, and with a newline inside: kept exact.
                4 => format!("binary {i} \u{e9}")
                    .into_bytes()
                    .into_iter()
                    .chain([0xff, 0, b'\n', b'x'])
                    .collect(),
                _ => format!("{unit} message {i}").into_bytes(),
            };
            (i, unit, msg)
        })
        .collect()
}

fn units_match(agg: &Aggregator, all: &[(u64, &str, Vec<u8>)]) -> bool {
    ["nginx.service", "sshd.service"]
        .iter()
        .all(|u| agg.log("h", &format!("journal/{u}"), "").ok() == Some(expected(all, u)))
}

#[test]
fn journal_entries_ship_per_unit_and_restarts_resume_at_the_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    std::fs::create_dir_all(&journal).expect("mkdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let mut all = batch(1, 300);
    journal_file(&journal, "one", &all);
    let cfg = config(dir.path(), &agg, &journal, "");
    let mut agent = Agent::start(&cfg);
    assert!(
        wait_until(Duration::from_secs(30), || units_match(&agg, &all)),
        "the first entries did not arrive per unit"
    );
    // Stopped, more entries, started: it resumes after the cursor.
    agent.proc.signal("TERM");
    assert!(agent.proc.wait_exit(Duration::from_secs(30)).is_some());
    let more = batch(301, 300);
    journal_file(&journal, "two", &more);
    all.extend(more);
    let mut agent = Agent::start(&cfg);
    assert!(
        wait_until(Duration::from_secs(30), || units_match(&agg, &all)),
        "entries written while the agent was stopped did not arrive exactly once"
    );
    // While it follows: more entries, then kill -9 soon after, and a restart.
    let shipped = expected(&all, "nginx.service").len();
    let more = batch(601, 300);
    journal_file(&journal, "three", &more);
    all.extend(more);
    // Killed once the new entries have started to arrive.
    assert!(wait_until(Duration::from_secs(30), || agg
        .log("h", "journal/nginx.service", "")
        .is_ok_and(|b| b.len() > shipped)));
    agent.proc.signal("KILL");
    assert!(agent.proc.wait_exit(Duration::from_secs(10)).is_some());
    let _agent = Agent::start(&cfg);
    assert!(
        wait_until(Duration::from_secs(30), || units_match(&agg, &all)),
        "after kill -9 and a restart the streams are not exactly the journal's"
    );
    // One generation per stream: the restarts renumbered nothing.
    let files = get(&agg.url("/store/files?host=h")).json();
    for f in files["files"].as_array().expect("files") {
        assert_eq!(f["generations"].as_array().map(Vec::len), Some(1), "{f}");
    }
}

#[test]
fn matches_select_the_units_shipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    std::fs::create_dir_all(&journal).expect("mkdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let all = batch(1, 60);
    journal_file(&journal, "one", &all);
    let cfg = config(
        dir.path(),
        &agg,
        &journal,
        "matches = [\"_SYSTEMD_UNIT=sshd.service\"]\nname = \"units/{unit}.log\"",
    );
    let _agent = Agent::start(&cfg);
    assert!(
        wait_until(Duration::from_secs(30), || agg
            .log("h", "units/sshd.service.log", "")
            .ok()
            == Some(expected(&all, "sshd.service"))),
        "the matching unit did not arrive"
    );
    let files = get(&agg.url("/store/files?host=h")).json();
    assert_eq!(
        files["files"].as_array().map(Vec::len),
        Some(1),
        "only the matching unit is shipped: {files}"
    );
}

#[test]
fn a_journald_source_is_checked_before_it_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |toml: &str| {
        check_agent_config(
            dir.path(),
            &format!("[[sources]]\ntype = \"journald\"\n{toml}"),
        )
    };
    let (code, text) = run("paths = [\"/var/log/*.log\"]\n");
    assert_eq!(code, Some(78), "{text}");
    assert!(text.contains("sources[0].paths"), "{text}");
    let (code, text) = run("name = \"journal/all\"\n");
    assert_eq!(code, Some(78), "{text}");
    assert!(text.contains("{unit}"), "{text}");
    let (code, text) =
        run("matches = [\"_SYSTEMD_UNIT=a.service\"]\ndirectory = \"/nonexistent/journal\"\n");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("entries matching _SYSTEMD_UNIT=a.service")
            && text.contains("warning: sources[0].directory"),
        "{text}"
    );
}

#[test]
fn with_two_sinks_each_keeps_its_own_cursor_and_a_late_one_gets_every_entry_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    std::fs::create_dir_all(&journal).expect("mkdir");
    let a = Aggregator::start(&dir.path().join("a"), &[]);
    let b_addr = free_addr();
    let mut all = batch(1, 300);
    journal_file(&journal, "one", &all);
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "host = \"h\"\nstate_dir = {:?}\ncheckpoint_interval = \"100ms\"\nshutdown_timeout = \"1s\"\n[[sinks]]\nname = \"a\"\nurl = {:?}\n[[sinks]]\nname = \"b\"\nurl = \"http://{b_addr}/store/batch\"\n[defaults]\nlinger = \"50ms\"\nretry = {{ initial = \"20ms\", max = \"300ms\" }}\n[[sources]]\ntype = \"journald\"\ndirectory = {:?}\n",
            dir.path().join("state").to_string_lossy(),
            a.url("/store/batch"),
            journal.to_string_lossy(),
        ),
    )
    .expect("write config");
    // Sink b is down: a gets the journal; a stop (which waits 1 s for b) and a restart
    // resume a at its cursor.
    let mut agent = Agent::start(&cfg);
    assert!(
        wait_until(Duration::from_secs(30), || units_match(&a, &all)),
        "sink a did not get the journal while b was down: {}",
        get(&a.url("/store/files?host=h")).text()
    );
    agent.proc.signal("TERM");
    assert!(agent.proc.wait_exit(Duration::from_secs(30)).is_some());
    let more = batch(301, 300);
    journal_file(&journal, "two", &more);
    all.extend(more);
    let _agent = Agent::start(&cfg);
    // b comes up: it gets every entry from the start, a each new one once.
    let b = Aggregator::start_on(&dir.path().join("b"), &b_addr, &[]);
    for (name, agg) in [("a", &a), ("b", &b)] {
        assert!(
            wait_until(Duration::from_secs(30), || units_match(agg, &all)),
            "sink {name}: the streams are not exactly the journal's"
        );
        let files = get(&agg.url("/store/files?host=h")).json();
        for f in files["files"].as_array().expect("files") {
            assert_eq!(f["generations"].as_array().map(Vec::len), Some(1), "{f}");
        }
    }
    // Saved every checkpoint_interval once acknowledged.
    assert!(
        wait_until(Duration::from_secs(10), || dir
            .path()
            .join("state/journald.json")
            .is_file()
            && dir.path().join("state/sinks/b/journald.json").is_file()),
        "each sink keeps its own journal cursor"
    );
}
