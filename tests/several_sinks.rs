//! Issue 34.3: several sinks at once (`[[sinks]]`). Every line reaches every sink; a sink
//! that is down holds up neither the others nor the agent's memory, and when it comes back
//! it gets every line exactly once; each sink resumes from its own checkpoint after a
//! restart, so a sink that appends (Loki) gets nothing twice; standard input, read once,
//! reaches every sink.

use std::path::{Path, PathBuf};
use std::time::Duration;

use logship_e2e::*;

/// An agent config with the `[[sinks]]` entries in `sinks`, shipping `logs/*.log` as host
/// `h`, its metrics at `metrics`.
fn config(dir: &Path, metrics: &str, sinks: &str) -> PathBuf {
    let text = format!(
        "host = \"h\"\nstate_dir = {:?}\npoll_interval = \"500ms\"\nmetrics_listen = {metrics:?}\n\n{sinks}\n[defaults]\nlinger = \"50ms\"\nretry = {{ initial = \"20ms\", max = \"300ms\" }}\n\n[[sources]]\npaths = [{:?}]\n",
        dir.join("state").to_string_lossy(),
        dir.join("logs").join("*.log").to_string_lossy(),
    );
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).expect("write agent config");
    p
}

/// The sum of `name`'s series that carry `label` (e.g. `sink="b"`); -1 when the agent does
/// not answer.
fn labelled_metric(addr: &str, name: &str, label: &str) -> f64 {
    let Some(text) = ureq::get(&format!("http://{addr}/metrics"))
        .timeout(Duration::from_secs(5))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
    else {
        return -1.0;
    };
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_down_sink_holds_up_nothing_and_gets_every_line_exactly_once_when_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Aggregator::start(&dir.path().join("a"), &[]);
    let b_addr = free_addr();
    let metrics = free_addr();
    let files = write_logs(dir.path(), 3, 2_000);
    let cfg = config(
        dir.path(),
        &metrics,
        &format!(
            "[[sinks]]\nname = \"a\"\nurl = {:?}\n\n[[sinks]]\nname = \"b\"\nurl = \"http://{b_addr}/store/batch\"\n",
            a.url("/store/batch")
        ),
    );
    let log = dir.path().join("agent.log");
    let agent = Agent::start_logged(&cfg, &[("RUST_LOG", "warn")], &log);

    // Sink b refuses connections: a gets everything regardless, and keeps getting appends.
    assert_all_shipped(&a, "h", &files, Duration::from_secs(30));
    for (f, p) in files.iter().enumerate() {
        append_lines(p, &format!("f{f}"), 2_000..3_000);
    }
    assert_all_shipped(&a, "h", &files, Duration::from_secs(30));

    // The agent says what waits for b, per file, and that b is why it is not ready.
    let total: u64 = files
        .iter()
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .sum();
    assert!(
        wait_until(Duration::from_secs(10), || {
            labelled_metric(&metrics, "agent_unshipped_bytes", "sink=\"b\"") == total as f64
                && labelled_metric(&metrics, "agent_unshipped_bytes", "sink=\"a\"") == 0.0
        }),
        "unshipped bytes per sink: a {}, b {} (files hold {total})",
        labelled_metric(&metrics, "agent_unshipped_bytes", "sink=\"a\""),
        labelled_metric(&metrics, "agent_unshipped_bytes", "sink=\"b\""),
    );
    let ready = ureq::get(&format!("http://{metrics}/readyz")).call();
    match ready {
        Err(ureq::Error::Status(503, r)) => {
            let body = r.into_string().unwrap_or_default();
            assert!(body.contains("sink \\\"b\\\""), "{body}");
        }
        other => panic!("readyz with sink b down: {other:?}"),
    }
    // The log says which sink fails.
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("sink{sink=b}") && l.contains("delivery failed")),
        "{logged}"
    );
    // Sink b keeps its state apart from a's.
    assert!(
        dir.path().join("state/sinks/b").is_dir(),
        "no state directory for sink b"
    );

    // b comes back: every line, once, one generation per file.
    let b = Aggregator::start_on(&dir.path().join("b"), &b_addr, &[]);
    assert_all_shipped(&b, "h", &files, Duration::from_secs(60));
    assert_all_shipped(&a, "h", &files, Duration::from_secs(5));
    drop(agent);
}

#[test]
fn each_sink_resumes_from_its_own_checkpoint_so_an_appending_sink_gets_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("agg"), &[]);
    let metrics = free_addr();
    let files = write_logs(dir.path(), 2, 1_500);
    // The same aggregator twice: our own form, and its Loki push endpoint (which appends
    // what it gets, so a line sent twice would be stored twice).
    let cfg = config(
        dir.path(),
        &metrics,
        &format!(
            "[[sinks]]\nurl = {:?}\n\n[[sinks]]\ntype = \"loki\"\nurl = {:?}\nlabels = {{ job = \"copy\" }}\n",
            agg.url("/store/batch"),
            agg.url("/loki/api/v1/push")
        ),
    );
    let via_loki = |p: &Path| format!("{}{{job=\"copy\"}}", p.display());
    let loki_exact = |p: &Path| agg.log("h", &via_loki(p), "").ok() == std::fs::read(p).ok();

    let mut agent = Agent::start(&cfg);
    assert_all_shipped(&agg, "h", &files, Duration::from_secs(30));
    assert!(
        wait_until(Duration::from_secs(30), || files
            .iter()
            .all(|p| loki_exact(p))),
        "not shipped exactly through the loki sink"
    );
    // A graceful stop saves both sinks' checkpoints; lines appended while stopped go to
    // each sink once after the restart.
    assert!(agent.proc.wait_catches(15, Duration::from_secs(10)));
    agent.proc.signal("TERM");
    assert!(
        agent.proc.wait_exit(Duration::from_secs(30)).is_some(),
        "the agent did not stop"
    );
    for (f, p) in files.iter().enumerate() {
        append_lines(p, &format!("f{f}"), 1_500..2_500);
    }
    let _agent = Agent::start(&cfg);
    assert_all_shipped(&agg, "h", &files, Duration::from_secs(30));
    assert!(
        wait_until(Duration::from_secs(30), || files
            .iter()
            .all(|p| loki_exact(p))),
        "after a restart the loki sink's copy is not the file: {:?} bytes stored, {:?} in the file",
        agg.log("h", &via_loki(&files[0]), "").map(|b| b.len()),
        std::fs::metadata(&files[0]).map(|m| m.len())
    );
}

#[test]
fn check_config_lists_every_sink_with_its_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_logs(dir.path(), 1, 1);
    let cfg = config(
        dir.path(),
        &free_addr(),
        "[[sinks]]\nurl = \"http://127.0.0.1:9/store/batch\"\n\n[[sinks]]\nname = \"grafana\"\ntype = \"loki\"\nurl = \"http://127.0.0.1:9/loki/api/v1/push\"\n",
    );
    let (code, out, err) = run_bin(
        "agent",
        &["--config", &cfg.to_string_lossy(), "--check-config"],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("# sink \"aggregator\": aggregator")
            && out.contains("# sink \"grafana\": loki")
            && out.contains("sinks/grafana")
            && out.contains("2 sinks: each reads every file itself"),
        "{out}"
    );
}

#[test]
fn standard_input_read_once_goes_to_every_sink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Aggregator::start(&dir.path().join("a"), &[]);
    let b = Aggregator::start(&dir.path().join("b"), &[]);
    let mut input = Vec::new();
    for i in 0..20_000u32 {
        input.extend_from_slice(format!("stdin line {i} \u{e9}\n").as_bytes());
    }
    input.extend_from_slice(b"\xff no newline at the end");
    let file = dir.path().join("input");
    std::fs::write(&file, &input).expect("write input");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "host = \"h\"\nstate_dir = {:?}\n[[sinks]]\nname = \"a\"\nurl = {:?}\n[[sinks]]\nname = \"b\"\nurl = {:?}\n[defaults]\nlinger = \"50ms\"\n[[sources]]\ntype = \"stdin\"\nname = \"/pipes/app\"\n",
            dir.path().join("state").to_string_lossy(),
            a.url("/store/batch"),
            b.url("/store/batch"),
        ),
    )
    .expect("write config");
    let mut agent = Agent::start_with_stdin(
        &cfg,
        std::process::Stdio::from(std::fs::File::open(&file).expect("open input")),
    );
    let status = agent
        .proc
        .wait_exit(Duration::from_secs(60))
        .expect("the agent exits after the end of input");
    assert_eq!(status.code(), Some(0));
    // Both acknowledged before it exited.
    assert_eq!(a.log("h", "/pipes/app", "").expect("stored at a"), input);
    assert_eq!(b.log("h", "/pipes/app", "").expect("stored at b"), input);
}

#[test]
fn a_reload_moves_one_sink_by_name_and_its_waiting_lines_follow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Aggregator::start(&dir.path().join("a"), &[]);
    let b = Aggregator::start(&dir.path().join("b"), &[]);
    let metrics = free_addr();
    let files = write_logs(dir.path(), 2, 1_000);
    let sinks = |b_url: &str| {
        format!(
            "[[sinks]]\nname = \"a\"\nurl = {:?}\n\n[[sinks]]\nname = \"b\"\nurl = {b_url:?}\n",
            a.url("/store/batch")
        )
    };
    // Sink b points at an address nothing listens on.
    let cfg = config(
        dir.path(),
        &metrics,
        &sinks(&format!("http://{}/store/batch", free_addr())),
    );
    let agent = Agent::start(&cfg);
    assert_all_shipped(&a, "h", &files, Duration::from_secs(30));
    // Metrics answer once SIGHUP is handled.
    assert!(wait_until(Duration::from_secs(10), || agent_metric(
        &metrics,
        "agent_files_tracked "
    ) >= 0.0));
    config(dir.path(), &metrics, &sinks(&b.url("/store/batch")));
    agent.proc.signal("HUP");
    assert_all_shipped(&b, "h", &files, Duration::from_secs(30));
    // a was left as it was: it gets appends, once.
    for (f, p) in files.iter().enumerate() {
        append_lines(p, &format!("f{f}"), 1_000..1_500);
    }
    assert_all_shipped(&a, "h", &files, Duration::from_secs(30));
    assert_all_shipped(&b, "h", &files, Duration::from_secs(30));
}
