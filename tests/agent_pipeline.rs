//! Issue 3: the agent and the aggregator together — globs, appends, restarts, outages,
//! config errors.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use logship_e2e::*;

logship_e2e::both_backends!(globs_with_appends_and_new_files_ship_byte_identical);

fn globs_with_appends_and_new_files_ship_byte_identical(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(logs.join("a/deep")).expect("mkdir");
    std::fs::create_dir_all(logs.join("b")).expect("mkdir");
    let agg = backend.aggregator(dir.path(), "", &[]);
    let mut files: Vec<PathBuf> = (0..6).map(|i| logs.join(format!("a/f{i}.log"))).collect();
    files.push(logs.join("a/deep/nested.log"));
    files.push(logs.join("b/other.log"));
    for (i, f) in files.iter().enumerate() {
        append_lines(f, &format!("file {i}"), 0..2000);
    }
    std::fs::write(logs.join("a/skip.txt"), "not matched\n").expect("write");
    std::fs::write(logs.join("a/excluded.log"), "excluded\n").expect("write");
    let glob = format!("{}/**/*.log", logs.display());
    let excl = format!("exclude = [\"{}/a/excluded.log\"]", logs.display());
    let metrics_addr = free_addr();
    let cfg = agent_config(
        dir.path(),
        &agg.url("/store/batch"),
        "web-1",
        &[&glob],
        &format!("metrics_listen = {metrics_addr:?}"),
        &excl,
    );
    let _agent = Agent::start(&cfg);
    assert_all_shipped(&agg, "web-1", &files, Duration::from_secs(30));
    // The agent's own metrics: per-file acked lines and unshipped bytes, checkpoint age.
    let f0 = files[0].to_string_lossy().into_owned();
    let acked = format!("agent_lines_acked_total{{file=\"{f0}\"}} 2000");
    let unshipped = format!("agent_unshipped_bytes{{file=\"{f0}\"}} 0");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let m = get(&format!("http://{metrics_addr}/metrics")).text();
            m.contains(&acked)
                && m.contains(&unshipped)
                && m.contains("agent_checkpoint_timestamp_seconds")
        }),
        "{}",
        get(&format!("http://{metrics_addr}/metrics")).text()
    );
    // Appends while running, a file created after start, in a directory created after start.
    for (i, f) in files.iter().enumerate() {
        append_lines(f, &format!("file {i} more"), 2000..2500);
    }
    std::fs::create_dir_all(logs.join("c")).expect("mkdir");
    let late = logs.join("c/late.log");
    append_lines(&late, "late", 0..100);
    files.push(late);
    assert_all_shipped(&agg, "web-1", &files, Duration::from_secs(30));
    assert_eq!(
        agg.log("web-1", &logs.join("a/excluded.log").to_string_lossy(), ""),
        Err(404)
    );
    assert_eq!(
        agg.log("web-1", &logs.join("a/skip.txt").to_string_lossy(), ""),
        Err(404)
    );
}

#[test]
fn restarts_by_sigterm_and_kill_9_resume_without_loss_or_duplication() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agg, logs, cfg) = start_pair(dir.path(), "", "");
    let files: Vec<PathBuf> = (0..3).map(|i| logs.join(format!("r{i}.log"))).collect();
    for f in &files {
        append_lines(f, "first", 0..5000);
    }
    let mut agent = Agent::start(&cfg);
    assert_all_shipped(&agg, "h", &files, Duration::from_secs(30));
    agent.proc.signal("TERM");
    let status = agent
        .proc
        .wait_exit(Duration::from_secs(20))
        .expect("agent exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    let state = std::fs::read_to_string(dir.path().join("state/checkpoints.json"))
        .expect("checkpoints written");
    assert!(state.contains("\"line\":5000"), "{state}");
    // Written while the agent was down.
    for f in &files {
        append_lines(f, "while down", 5000..8000);
    }
    let mut agent = Agent::start(&cfg);
    assert_all_shipped(&agg, "h", &files, Duration::from_secs(30));
    // kill -9 in the middle of shipping a large append, then restart.
    for f in &files {
        append_lines(f, "before kill", 8000..60_000);
    }
    assert!(wait_until(Duration::from_secs(20), || {
        agg.log("h", &files[0].to_string_lossy(), "&tail=1")
            .is_ok_and(|b| b.starts_with(b"before kill"))
    }));
    agent.proc.kill9();
    for f in &files {
        append_lines(f, "after kill", 60_000..61_000);
    }
    let _agent = Agent::start(&cfg);
    assert_all_shipped(&agg, "h", &files, Duration::from_secs(60));
}

#[test]
fn aggregator_down_at_agent_start_still_receives_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let addr = free_addr();
    let files: Vec<PathBuf> = (0..3).map(|i| logs.join(format!("d{i}.log"))).collect();
    for f in &files {
        append_lines(f, "early", 0..3000);
    }
    let url = format!("http://{addr}/store/batch");
    let cfg = agent_config(
        dir.path(),
        &url,
        "h",
        &[&format!("{}/*.log", logs.display())],
        "",
        "",
    );
    let agent = Agent::start(&cfg);
    // The agent retries against nothing for a while; keep writing meanwhile.
    std::thread::sleep(Duration::from_millis(1500));
    for f in &files {
        append_lines(f, "during outage", 3000..4000);
    }
    assert!(agent.proc.rss() > 0, "agent still running");
    let agg = Aggregator::start_on(&dir.path().join("data"), &addr, &[]);
    assert_all_shipped(&agg, "h", &files, Duration::from_secs(60));
}

fn agent_config_error(dir: &Path, text: &str) -> String {
    let p = dir.join("bad.toml");
    std::fs::write(&p, text).expect("write");
    let out = Command::new(bin("agent"))
        .arg("--config")
        .arg(&p)
        .arg("--check-config")
        .output()
        .expect("run agent");
    assert_eq!(
        out.status.code(),
        Some(78),
        "agent should refuse {text:?} with EX_CONFIG"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn config_errors_name_the_key_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = "[sink]\nurl = \"http://127.0.0.1:1/store/batch\"\n";
    let cases = [
        // unknown key (a typo)
        (
            format!("{sink}[[sources]]\npaths = [\"/tmp/*.log\"]\nbatch_line = 5\n"),
            "bad.toml:5",
            "batch_line",
        ),
        // bad duration
        (
            format!("{sink}[defaults]\nlinger = \"fast\"\n[[sources]]\npaths = [\"/tmp/*.log\"]\n"),
            "bad.toml:4",
            "linger",
        ),
        // bad glob
        (
            format!("{sink}[[sources]]\npaths = [\"/tmp/[oops.log\"]\n"),
            "bad.toml:4",
            "sources[0].paths",
        ),
        // missing sink url
        (
            "[sink]\ntype = \"aggregator\"\n[[sources]]\npaths = [\"/tmp/*.log\"]\n".to_owned(),
            "bad.toml",
            "sink.url",
        ),
        // wrong type
        (
            format!(
                "{sink}[limits]\nmax_in_flight = \"lots\"\n[[sources]]\npaths = [\"/tmp/*.log\"]\n"
            ),
            "bad.toml:4",
            "max_in_flight",
        ),
        // a count too large to honour (used to panic)
        (
            format!(
                "{sink}[limits]\nmax_open_files = 9223372036854775807\n[[sources]]\npaths = [\"/tmp/*.log\"]\n"
            ),
            "bad.toml:4",
            "limits.max_open_files",
        ),
    ];
    for (text, at, key) in cases {
        let err = agent_config_error(dir.path(), &text);
        assert!(
            err.contains(at) && err.contains(key),
            "stderr {err:?} should name {at:?} and {key:?}"
        );
    }
}

#[test]
fn check_config_lists_the_files_it_would_ship() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    std::fs::write(logs.join("one.log"), "x\n").expect("write");
    std::fs::write(logs.join("two.log"), "y\n").expect("write");
    let cfg = agent_config(
        dir.path(),
        "http://127.0.0.1:1/store/batch",
        "h",
        &["logs/*.log"],
        "",
        "",
    );
    let out = Command::new(bin("agent"))
        .args(["--config"])
        .arg(&cfg)
        .arg("--check-config")
        .output()
        .expect("run agent");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 file(s)"), "{text}");
    assert!(
        text.contains(&logs.join("one.log").to_string_lossy().into_owned()),
        "{text}"
    );
}
