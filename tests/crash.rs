//! Issue 5 (part): crashes and outages with the real binaries — kill -9 of either side,
//! lost agent state, an aggregator down for 30 s while lines pile up.

use std::path::PathBuf;
use std::time::Duration;

use logship_e2e::*;

fn stored_lines(agg: &Aggregator) -> u64 {
    let v = get(&agg.url("/store/files?host=h")).json();
    v["files"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|f| f["generations"].as_array().cloned().unwrap_or_default())
        .map(|g| g["lines"].as_u64().unwrap_or(0))
        .sum()
}

fn exact_with_one_generation(agg: &Aggregator, files: &[PathBuf]) -> bool {
    files.iter().all(|f| {
        let name = f.to_string_lossy();
        let gens = generations(agg, "h", &name);
        gens.len() == 1 && gens[0].1 == line_count(f) && shipped_exactly(agg, "h", f)
    })
}

fn ten_files(logs: &std::path::Path, lines: usize) -> Vec<PathBuf> {
    let files: Vec<PathBuf> = (0..10).map(|i| logs.join(format!("c{i}.log"))).collect();
    for (i, f) in files.iter().enumerate() {
        append_lines(f, &format!("crash file {i}"), 0..lines);
    }
    files
}

#[test]
fn aggregator_killed_twice_while_shipping_300k_lines_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let files = ten_files(&logs, 30_000);
    let addr = free_addr();
    let data = dir.path().join("data");
    let mut agg = Aggregator::start_on(&data, &addr, &[]);
    let cfg = agent_config(
        dir.path(),
        &format!("http://{addr}/store/batch"),
        "h",
        &[&format!("{}/*.log", logs.display())],
        "",
        "",
    );
    let _agent = Agent::start(&cfg);
    for threshold in [40_000, 150_000] {
        assert!(
            wait_until(Duration::from_secs(60), || stored_lines(&agg) >= threshold),
            "stuck below {threshold}"
        );
        agg.proc.kill9();
        agg = Aggregator::start_on(&data, &addr, &[]);
    }
    assert!(
        wait_until(Duration::from_secs(120), || exact_with_one_generation(
            &agg, &files
        )),
        "after two kill -9 of the aggregator: {} of 300000 lines stored",
        stored_lines(&agg)
    );
}

#[test]
fn agent_killed_twice_then_state_lost_resends_without_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agg, logs, cfg) = start_pair(dir.path(), "", "");
    let files = ten_files(&logs, 20_000);
    let mut agent = Agent::start(&cfg);
    for threshold in [30_000, 120_000] {
        assert!(
            wait_until(Duration::from_secs(60), || stored_lines(&agg) >= threshold),
            "stuck below {threshold}"
        );
        agent.proc.kill9();
        agent = Agent::start(&cfg);
    }
    assert!(wait_until(Duration::from_secs(120), || {
        exact_with_one_generation(&agg, &files)
    }));
    // Lose the state entirely: a full resend must change nothing.
    agent.proc.signal("TERM");
    agent
        .proc
        .wait_exit(Duration::from_secs(20))
        .expect("agent stops");
    std::fs::remove_dir_all(dir.path().join("state")).expect("delete state");
    let before = get(&agg.url("/metrics")).text();
    let received = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("aggregator_lines_received_total"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let r0 = received(&before);
    let _agent = Agent::start(&cfg);
    assert!(
        wait_until(Duration::from_secs(120), || received(
            &get(&agg.url("/metrics")).text()
        ) >= r0 + 200_000.0),
        "the resend did not happen"
    );
    assert!(
        exact_with_one_generation(&agg, &files),
        "a full resend duplicated or changed something"
    );
}

#[test]
fn aggregator_down_30_s_agent_memory_stays_bounded_and_everything_arrives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let addr = free_addr();
    let data = dir.path().join("data");
    let files: Vec<PathBuf> = (0..4).map(|i| logs.join(format!("o{i}.log"))).collect();
    let cfg = agent_config(
        dir.path(),
        &format!("http://{addr}/store/batch"),
        "h",
        &[&format!("{}/*.log", logs.display())],
        "[limits]\nmax_buffered_bytes = \"8MiB\"",
        "",
    );
    let agent = Agent::start(&cfg);
    // 200,000 lines (~10 MB) pile up while nothing listens, for 30 s.
    let started = std::time::Instant::now();
    let mut peak = 0;
    for (i, f) in files.iter().enumerate() {
        append_lines(f, &format!("outage {i}"), 0..50_000);
    }
    while started.elapsed() < Duration::from_secs(30) {
        peak = peak.max(agent.proc.rss());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(peak > 0, "agent not running");
    assert!(
        peak < 96 << 20,
        "agent RSS {} MiB during the outage",
        peak >> 20
    );
    let agg = Aggregator::start_on(&data, &addr, &[]);
    assert!(
        wait_until(Duration::from_secs(90), || exact_with_one_generation(
            &agg, &files
        )),
        "{} of 200000 lines after the outage",
        stored_lines(&agg)
    );
}
