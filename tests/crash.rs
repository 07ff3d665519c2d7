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

/// What a 2xx promises beyond kill -9: that the lines survive the machine losing power.
/// The aggregator runs under `strace`, and for every acknowledgement the test checks that
/// each store file written before it — the segment files holding the lines and sled's
/// `index/db` naming them — was fsynced (`fsync`/`fdatasync`) after its last write and
/// before the acknowledgement. sled's own flush only `sync_file_range`s its log, which
/// neither commits the file's size nor flushes the disk's cache: without the commit's
/// explicit sync of `index/db` an acknowledged batch could come back after a power cut as
/// data no index entry names, and compaction would reclaim it as garbage.
#[test]
fn every_acknowledgement_follows_an_fsync_of_the_data_and_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let trace = dir.path().join("trace");
    let pid = agg.proc.child.id();
    let mut strace = Proc {
        child: std::process::Command::new("strace")
            .args(["-f", "-y", "-qq", "-s", "24", "-o"])
            .arg(&trace)
            .args([
                "-e",
                "trace=pwrite64,pwritev,write,writev,fsync,fdatasync,sync_file_range",
                "-p",
                &pid.to_string(),
            ])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("strace is missing: apt-get install strace (scripts/test does)"),
        name: "strace",
    };
    // Every thread of the aggregator traced before the first request.
    let traced = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("status")).is_ok_and(|s| {
                s.lines().any(|l| {
                    l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0")
                })
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), traced),
        "strace did not attach to the aggregator within 10 s (is ptrace allowed here?)"
    );
    let posts = 12u64;
    for batch in 0..posts {
        let lines: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("batch {batch} line {i}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let file = format!("/f{}", batch % 3);
        let r = post_compact(&agg, "h", &file, "g", (batch / 3) * 40, &refs);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    strace.signal("INT");
    assert!(
        strace.wait_exit(Duration::from_secs(10)).is_some(),
        "strace did not detach"
    );
    let text = std::fs::read_to_string(&trace).expect("read the trace");
    let report = check_acks_follow_syncs(&text);
    assert_eq!(
        report.acks, posts,
        "every acknowledgement should be in the trace\n{text}"
    );
    assert!(
        report.index_writes > 0 && report.segment_writes > 0,
        "the trace should show writes to index/db and to the segments: {report:?}\n{text}"
    );
    assert!(
        report.unsynced.is_empty(),
        "acknowledged before their store files were fsynced: {:#?}",
        report.unsynced
    );
}

#[derive(Debug, Default)]
struct SyncReport {
    acks: u64,
    index_writes: u64,
    segment_writes: u64,
    /// (line of the ack in the trace, the file written and not fsynced since).
    unsynced: Vec<(usize, String)>,
}

/// Reads `strace -f -y` output: per store file, the trace line of its last completed write
/// and of its last successful fsync; at each `HTTP/1.1 200` written to a socket, every
/// store file written so far must have been fsynced since its last write.
fn check_acks_follow_syncs(trace: &str) -> SyncReport {
    use std::collections::HashMap;
    let mut report = SyncReport::default();
    let mut last_write: HashMap<String, usize> = HashMap::new();
    let mut last_sync: HashMap<String, usize> = HashMap::new();
    // A syscall that another thread's line interrupted: pid → its name, fd path and text.
    let mut unfinished: HashMap<String, (String, String)> = HashMap::new();
    for (i, line) in trace.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let rest = rest.trim_start();
        let (call, text) = if let Some(resumed) = rest.strip_prefix("<... ") {
            match unfinished.remove(pid) {
                Some((call, start)) => (call, format!("{start}{resumed}")),
                None => continue,
            }
        } else {
            let Some((call, args)) = rest.split_once('(') else {
                continue;
            };
            if rest.ends_with("<unfinished ...>") {
                unfinished.insert(pid.to_owned(), (call.to_owned(), args.to_owned()));
                continue;
            }
            (call.to_owned(), args.to_owned())
        };
        // `-y` prints the first argument as `fd<path>`.
        let path = text
            .split_once('<')
            .and_then(|(_, p)| p.split_once('>'))
            .map_or("", |(p, _)| p);
        let store_file = path.ends_with(".seg") || path.ends_with("/index/db");
        match call.as_str() {
            "pwrite64" | "pwritev" | "write" | "writev" if store_file => {
                last_write.insert(path.to_owned(), i);
                if path.ends_with("/index/db") {
                    report.index_writes += 1;
                } else {
                    report.segment_writes += 1;
                }
            }
            "fsync" | "fdatasync" if store_file && text.trim_end().ends_with("= 0") => {
                last_sync.insert(path.to_owned(), i);
            }
            "write" | "writev"
                if (path.starts_with("socket:") || path.starts_with("TCP"))
                    && text.contains("HTTP/1.1 200") =>
            {
                report.acks += 1;
                for (file, w) in &last_write {
                    if last_sync.get(file).is_none_or(|s| s < w) {
                        report.unsynced.push((i + 1, file.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    report
}
