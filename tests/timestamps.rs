//! Issue 32.3 (a time on every line) and 32.5 (upgrades lose nothing): every line is stored
//! with the time the aggregator received it; downloads (`format=ndjson`) and search results
//! carry it as `ts`; `since`/`until` hold exactly to the line; and a store written by the
//! previous release (a fixture: `tests/fixtures/store-v1`, written by its agent and
//! aggregator: a sled `data` directory, and a Redis keyspace as `redis/dump.rdb`) serves every
//! line, old lines without a time, rewritten ones with one.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use logship_e2e::*;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Milliseconds since the epoch of an RFC 3339 time (`2026-12-07T19:33:09.181Z`).
fn ms_of(rfc3339: &str) -> u64 {
    humantime::parse_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339:?}: {e}"))
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64
}

fn ndjson(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

logship_e2e::both_backends!(every_line_has_its_receive_time_and_since_is_exact_to_the_line);

fn every_line_has_its_receive_time_and_since_is_exact_to_the_line(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = backend.aggregator(dir.path(), "", &[]);
    let before = now_ms();
    assert_eq!(
        post_compact(&agg, "h", "/t.log", "g", 0, &[b"early needle"]).status,
        200
    );
    let after_first = now_ms();
    // Lines 1 and 2 come later into the same bucket of 128 lines: a window by bucket could
    // not tell them from line 0.
    assert!(wait_until(Duration::from_secs(5), || now_ms() > after_first + 20));
    let between = now_ms();
    assert!(wait_until(Duration::from_secs(5), || now_ms() > between + 20));
    let second = now_ms();
    assert_eq!(
        post_compact(
            &agg,
            "h",
            "/t.log",
            "g",
            1,
            &[b"late needle", b"late other"]
        )
        .status,
        200
    );
    let after = now_ms();

    let lines = ndjson(&get(&agg.url("/store/log?host=h&file=/t.log&format=ndjson")).text());
    assert_eq!(lines.len(), 3, "{lines:?}");
    let ts: Vec<u64> = lines
        .iter()
        .map(|l| ms_of(l["ts"].as_str().unwrap_or_else(|| panic!("no ts: {l}"))))
        .collect();
    assert!(
        (before..=after_first).contains(&ts[0]),
        "line 0 at {} not in {before}..={after_first}",
        ts[0]
    );
    for t in &ts[1..] {
        assert!(
            (second..=after).contains(t),
            "a late line at {t} not in {second}..={after}"
        );
    }
    // The plain download stays the file's bytes.
    assert_eq!(
        get(&agg.url("/store/log?host=h&file=/t.log")).text(),
        "early needle\nlate needle\nlate other\n"
    );

    let since =
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(between)).to_string();
    let found =
        ndjson(&get(&agg.url(&format!("/store/search?q=needle&since={}", enc(&since)))).text());
    let matched: Vec<u64> = found.iter().filter_map(|v| v["line"].as_u64()).collect();
    assert_eq!(
        matched,
        vec![1],
        "since {since}: only the late line: {found:?}"
    );
    let t = found[0]["ts"].as_str().expect("a result carries ts");
    assert!((second..=after).contains(&ms_of(t)));
    let until =
        ndjson(&get(&agg.url(&format!("/store/search?q=needle&until={}", enc(&since)))).text());
    let matched: Vec<u64> = until.iter().filter_map(|v| v["line"].as_u64()).collect();
    assert_eq!(
        matched,
        vec![0],
        "until {since}: only the early line: {until:?}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// A `redis-server` loading the fixture's `dump.rdb`, killed on drop.
struct OldRedis(std::process::Child, u16);

impl Drop for OldRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl OldRedis {
    fn start(dir: &Path) -> OldRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--dbfilename", "dump.rdb"])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let r = OldRedis(child, port);
        assert!(
            wait_until(Duration::from_secs(10), || redis_cli(port, &["dbsize"])
                .trim()
                .parse::<u64>()
                .is_ok_and(|n| n > 0)),
            "redis-server did not load the fixture"
        );
        r
    }
}

fn previous_release_serves_every_line(agg: &Aggregator, fixture: &Path) {
    // The files were shipped from /tmp/fx/logs by the previous release's agent.
    for name in ["app.log", "syslog.log"] {
        let want = std::fs::read(fixture.join("logs").join(name)).expect("fixture log");
        let got = agg
            .log("old-host", &format!("/tmp/fx/logs/{name}"), "")
            .unwrap_or_else(|s| panic!("{name}: {s}"));
        assert!(
            got == want,
            "{name}: {} bytes served, {} in the file",
            got.len(),
            want.len()
        );
    }
    let file = "/tmp/fx/logs/app.log";
    let old = ndjson(
        &get(&agg.url(&format!(
            "/store/log?host=old-host&file={}&format=ndjson",
            enc(file)
        )))
        .text(),
    );
    assert_eq!(old.len(), 302);
    assert!(
        old.iter().all(|l| l.get("ts").is_none()),
        "an old line has a time"
    );
    assert!(
        old[301]["partial"].as_bool().unwrap_or(false),
        "the partial last line"
    );
    // Search reads the old format too.
    let found =
        ndjson(&get(&agg.url("/store/search?q=path%3D%2Fapi%2Fv1%2Fitems%2F250%20")).text());
    assert_eq!(
        found
            .iter()
            .filter_map(|v| v["line"].as_u64())
            .collect::<Vec<_>>(),
        vec![250]
    );
    // The partial line completed and line 5 rewritten now: those two have a time, the
    // others in their buckets still have none, and every byte is right.
    let generation = generations(agg, "old-host", file)[0].0.clone();
    assert_eq!(
        post_compact(
            agg,
            "old-host",
            file,
            &generation,
            301,
            &[b"a partial last line, completed"]
        )
        .status,
        200
    );
    assert_eq!(
        post_compact(agg, "old-host", file, &generation, 5, &[b"line 5 again"]).status,
        200
    );
    let now = ndjson(
        &get(&agg.url(&format!(
            "/store/log?host=old-host&file={}&format=ndjson",
            enc(file)
        )))
        .text(),
    );
    let timed: Vec<u64> = now
        .iter()
        .filter(|l| l.get("ts").is_some())
        .filter_map(|l| l["line"].as_u64())
        .collect();
    assert_eq!(timed, vec![5, 301]);
    let mut want = std::fs::read(fixture.join("logs/app.log")).expect("fixture log");
    want.extend_from_slice(b", completed\n");
    let text = String::from_utf8_lossy(&want).into_owned();
    let fifth = text.lines().nth(5).expect("line 5").to_owned();
    let want = text.replacen(&format!("{fifth}\n"), "line 5 again\n", 1);
    let got = agg.log("old-host", file, "").expect("download");
    assert_eq!(String::from_utf8_lossy(&got), want);
}

#[test]
fn a_sled_store_written_by_the_previous_release_serves_every_line() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/store-v1");
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&fixture.join("data"), &dir.path().join("data"));
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    previous_release_serves_every_line(&agg, &fixture);
}

#[test]
fn a_sled_store_written_by_the_previous_release_is_sealed_in_the_background_and_serves_every_line()
{
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/store-v1");
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&fixture.join("data"), &dir.path().join("data"));
    let agg = Aggregator::with_config(dir.path(), "[store]\nseal_after = \"200ms\"\n");
    // The first round of the sealer walks every generation: the old raw buckets are quiet.
    let sealed = wait_until(Duration::from_secs(30), || {
        let m = get(&agg.url("/metrics")).text();
        metric(&m, "aggregator_store_sealed_buckets_total") > 0.0
            && metric(&m, "aggregator_store_seal_waiting_bytes") == 0.0
    });
    assert!(
        sealed,
        "the old store was not sealed: {}",
        get(&agg.url("/metrics")).text()
    );
    previous_release_serves_every_line(&agg, &fixture);
}

#[test]
fn a_redis_keyspace_written_by_the_previous_release_serves_every_line() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/store-v1");
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&fixture.join("redis"), &dir.path().join("redis"));
    let redis = OldRedis::start(&dir.path().join("redis"));
    let agg = Aggregator::with_config(
        dir.path(),
        &format!(
            "[store]\ntype = \"redis\"\nnodes = [\"redis://127.0.0.1:{}\"]\n",
            redis.1
        ),
    );
    previous_release_serves_every_line(&agg, &fixture);
}

logship_e2e::both_backends!(order_newest_sorts_results_by_time_across_hosts_and_files);

fn order_newest_sorts_results_by_time_across_hosts_and_files(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = backend.aggregator(dir.path(), "", &[]);
    // In storage order (host, file, line) the results would be a:0, a:1, b:0; received
    // a:0, then b:0, then a:1.
    let later = |after: u64| assert!(wait_until(Duration::from_secs(5), || now_ms() > after + 5));
    assert_eq!(
        post_compact(&agg, "a", "/x.log", "g", 0, &[b"needle first"]).status,
        200
    );
    later(now_ms());
    assert_eq!(
        post_compact(&agg, "b", "/y.log", "g", 0, &[b"needle second"]).status,
        200
    );
    later(now_ms());
    assert_eq!(
        post_compact(&agg, "a", "/x.log", "g", 1, &[b"needle third"]).status,
        200
    );
    let contents = |params: &str| -> (Vec<String>, serde_json::Value) {
        let all = ndjson(&get(&agg.url(&format!("/store/search?q=needle&{params}"))).text());
        let summary = all
            .iter()
            .find(|v| v.get("summary").is_some())
            .cloned()
            .expect("summary");
        let lines = all
            .iter()
            .filter_map(|v| v["content"].as_str().map(str::to_owned))
            .collect();
        (lines, summary["summary"].clone())
    };
    let (storage, _) = contents("");
    assert_eq!(storage, ["needle first", "needle third", "needle second"]);
    let (newest, s) = contents("order=newest");
    assert_eq!(newest, ["needle third", "needle second", "needle first"]);
    assert_eq!(
        (s["matches"].as_u64(), s["truncated"].as_bool()),
        (Some(3), Some(false))
    );
    let (oldest, _) = contents("order=oldest");
    assert_eq!(oldest, ["needle first", "needle second", "needle third"]);
    // limit keeps the newest, and the summary says more matched.
    let (two, s) = contents("order=newest&limit=2");
    assert_eq!(two, ["needle third", "needle second"]);
    assert_eq!(
        (s["matches"].as_u64(), s["reason"].as_str()),
        (Some(3), Some("limit"))
    );
    let refused = get(&agg.url("/store/search?q=needle&order=newest&context=2"));
    assert_eq!(refused.status, 400);
    assert!(refused.text().contains("context"), "{}", refused.text());
}
