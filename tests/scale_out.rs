//! Issue 12: scale-out on a real Redis Cluster — roles, agents failing over between ingest
//! aggregators, a Redis primary killed mid-stream, the whole cluster down, retention.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logship_e2e::*;

/// An aggregator on `cluster` with `role` and `toml` (no `[store]` table), in `dir`.
fn node(
    cluster: &RedisCluster,
    dir: &Path,
    role: &str,
    wait_replicas: u32,
    toml: &str,
) -> Aggregator {
    std::fs::create_dir_all(dir).expect("mkdir");
    let cfg = dir.join("agg.toml");
    std::fs::write(
        &cfg,
        format!(
            "role = {role:?}\n{toml}\n{}",
            cluster.store_toml(wait_replicas)
        ),
    )
    .expect("write config");
    Aggregator::start(
        &dir.join("data"),
        &["--config", cfg.to_str().expect("utf-8")],
    )
}

/// An all-role aggregator on `cluster` with store keys set through the environment (the
/// cluster's `[store]` table is the file's).
fn node_with_env(cluster: &RedisCluster, dir: &Path, env: &[(&str, &str)]) -> Aggregator {
    let cfg = dir.join("agg.toml");
    std::fs::write(&cfg, format!("role = \"all\"\n{}", cluster.store_toml(1))).expect("write");
    Aggregator::start_with_env(
        &dir.join("data"),
        "127.0.0.1:0",
        &["--config", cfg.to_str().expect("utf-8")],
        env,
    )
}

/// An agent config shipping `logs/*.log` as `host` to every URL in `urls`.
fn agent_to(dir: &Path, urls: &[String], host: &str, logs: &Path, extra: &str) -> PathBuf {
    let list: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    let text = format!(
        "host = {host:?}\nstate_dir = {:?}\npoll_interval = \"500ms\"\n{extra}\n[sink]\nurl = [{}]\ntimeout = \"5s\"\n\n[defaults]\nlinger = \"50ms\"\nretry = {{ initial = \"20ms\", max = \"500ms\" }}\n\n[[sources]]\npaths = [{:?}]\n",
        dir.join("state").to_string_lossy(),
        list.join(", "),
        format!("{}/*.log", logs.display()),
    );
    std::fs::create_dir_all(dir).expect("mkdir");
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).expect("write agent config");
    p
}

/// An all-role aggregator (`wait_replicas = 1`) and an agent shipping `n` files of `lines`
/// lines each, as host `h`, from `dir/logs`.
fn one_node_shipping(
    cluster: &RedisCluster,
    dir: &Path,
    n: usize,
    lines: usize,
) -> (Aggregator, Vec<PathBuf>, Agent) {
    let agg = node(cluster, &dir.join("agg"), "all", 1, "");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let files: Vec<PathBuf> = (0..n).map(|i| logs.join(format!("f{i}.log"))).collect();
    for f in &files {
        append_lines(f, "start", 0..lines);
    }
    let cfg = agent_to(
        &dir.join("agent"),
        &[agg.url("/store/batch")],
        "h",
        &logs,
        "",
    );
    let agent = Agent::start(&cfg);
    (agg, files, agent)
}

/// Appends to every file in `files`, a few lines each round, until `stop`.
fn keep_writing(files: Vec<PathBuf>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            for (i, f) in files.iter().enumerate() {
                append_lines(f, &format!("file {i}"), n..n + 20);
            }
            n += 20;
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

#[test]
fn roles_split_the_api_and_a_query_node_follows_writes_made_elsewhere() {
    let cluster = RedisCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ingest = node(&cluster, &dir.path().join("i"), "ingest", 1, "");
    let query = node(&cluster, &dir.path().join("q"), "query", 1, "");
    // Each role refuses the other's routes with a JSON 404 that names the role.
    let r = get(&ingest.url("/store/hosts"));
    assert_eq!(r.status, 404);
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("role is \"ingest\"")),
        "{}",
        r.text()
    );
    let r = post_compact(&query, "h", "/f", "g", 0, &[b"x"]);
    assert_eq!(r.status, 404);
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("role is \"query\"")),
        "{}",
        r.text()
    );
    for a in [&ingest, &query] {
        assert_eq!(get(&a.url("/ruok")).status, 200);
        assert_eq!(get(&a.url("/metrics")).status, 200);
    }
    // A follower on the query node sees lines posted to the ingest node within 300 ms.
    assert_eq!(
        post_compact(&ingest, "h", "/f", "g", 0, &[b"first"]).status,
        200
    );
    let f = Follower::open(&query.url("/store/log?host=h&file=/f&follow=true"));
    assert_eq!(f.status, 200);
    assert!(
        wait_until(Duration::from_secs(5), || f.text() == "first\n"),
        "{:?}",
        f.text()
    );
    let mut expected = String::from("first\n");
    let mut delays = Vec::new();
    for i in 1..=100u64 {
        let line = format!("line {i}");
        let t = Instant::now();
        assert_eq!(
            post_compact(&ingest, "h", "/f", "g", i, &[line.as_bytes()]).status,
            200
        );
        expected.push_str(&line);
        expected.push('\n');
        assert!(
            wait_until(Duration::from_secs(5), || f.text() == expected),
            "line {i} never followed: {:?}",
            f.text()
        );
        delays.push(t.elapsed());
    }
    delays.sort();
    let p99 = delays[delays.len() * 99 / 100 - 1];
    assert!(
        p99 <= Duration::from_millis(300),
        "p99 follow delay {p99:?} (all: {delays:?})"
    );
    // With sled a split role is a config error naming the key.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "role = \"ingest\"\n").expect("write");
    let out = std::process::Command::new(bin("aggregator"))
        .args(["--config", bad.to_str().expect("utf-8"), "--check-config"])
        .output()
        .expect("run aggregator");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("role") && err.contains("redis"), "{err}");
}

#[test]
fn agents_fail_over_when_an_ingest_node_is_killed_and_nothing_is_duplicated() {
    let cluster = RedisCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ingest_a = node(&cluster, &dir.path().join("a"), "ingest", 1, "");
    let ingest_b = node(&cluster, &dir.path().join("b"), "ingest", 1, "");
    let query = node(&cluster, &dir.path().join("q"), "query", 1, "");
    let urls = vec![ingest_a.url("/store/batch"), ingest_b.url("/store/batch")];
    let mut files = Vec::new();
    let mut agents = Vec::new();
    let mut metrics_addrs = Vec::new();
    for host in ["web-1", "web-2"] {
        let logs = dir.path().join(host).join("logs");
        std::fs::create_dir_all(&logs).expect("mkdir");
        let host_files: Vec<PathBuf> = (0..5).map(|i| logs.join(format!("f{i}.log"))).collect();
        for f in &host_files {
            append_lines(f, "start", 0..500);
        }
        let addr = free_addr();
        let cfg = agent_to(
            &dir.path().join(host),
            &urls,
            host,
            &logs,
            &format!("metrics_listen = {addr:?}"),
        );
        agents.push(Agent::start(&cfg));
        metrics_addrs.push(addr);
        files.push((host, host_files));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let all: Vec<PathBuf> = files.iter().flat_map(|(_, f)| f.clone()).collect();
    let writer = keep_writing(all, stop.clone());
    // Both ingest nodes take batches before one dies.
    let served = |a: &Aggregator| {
        metric(
            &get(&a.url("/metrics")).text(),
            "aggregator_lines_stored_total",
        )
    };
    assert!(
        wait_until(Duration::from_secs(20), || served(&ingest_a) > 0.0
            && served(&ingest_b) > 0.0),
        "batches were not spread over both ingest nodes"
    );
    ingest_a.proc.kill9();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    for (host, host_files) in &files {
        assert_all_shipped(&query, host, host_files, Duration::from_secs(60));
    }
    // The agents saw the dead endpoint and say so per endpoint.
    let dead = format!("agent_endpoint_up{{endpoint=\"{}\"}} 0", urls[0]);
    for addr in &metrics_addrs {
        let m = get(&format!("http://{addr}/metrics")).text();
        assert!(m.contains(&dead), "{m}");
        assert!(
            metric(
                &m,
                &format!(
                    "agent_endpoint_requests_total{{endpoint=\"{}\",outcome=\"ok\"",
                    urls[1]
                )
            ) > 0.0,
            "{m}"
        );
    }
}

#[test]
fn a_redis_primary_killed_mid_stream_loses_nothing_acknowledged() {
    let cluster = RedisCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (agg, files, _agent) = one_node_shipping(&cluster, dir.path(), 6, 1000);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = keep_writing(files.clone(), stop.clone());
    assert!(wait_until(Duration::from_secs(20), || files.iter().all(
        |f| agg
            .log("h", &f.to_string_lossy(), "")
            .is_ok_and(|b| !b.is_empty())
    )));
    let victim = cluster.primaries()[0];
    cluster.kill9(victim);
    // Its replica is promoted; then the old primary returns as a replica, so WAIT 1 can be
    // met again.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let p = cluster.primaries();
            p.len() == 3 && !p.contains(&victim)
        }),
        "no failover: primaries {:?}",
        cluster.primaries()
    );
    std::thread::sleep(Duration::from_secs(1));
    cluster.restart_stopped();
    assert!(
        cluster.wait_ok(Duration::from_secs(60)),
        "cluster did not heal"
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    assert_all_shipped(&agg, "h", &files, Duration::from_secs(60));
}

#[test]
fn the_whole_cluster_down_for_20_s_gets_503s_and_everything_arrives_after() {
    let cluster = RedisCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (agg, files, agent) = one_node_shipping(&cluster, dir.path(), 4, 500);
    assert_all_shipped(&agg, "h", &files, Duration::from_secs(30));
    cluster.kill_all();
    let down_at = Instant::now();
    // Ingest answers 503 + Retry-After within the store timeout (3 s + 2 s wait), never 500.
    let t = Instant::now();
    let r = post_compact(&agg, "other", "/x", "g", 0, &[b"during the outage"]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("redis")),
        "{}",
        r.text()
    );
    // Twenty at once: none queues behind another's attempt to reconnect.
    let slowest = std::thread::scope(|s| {
        let posts: Vec<_> = (0..20)
            .map(|i| {
                let agg = &agg;
                s.spawn(move || {
                    let t = Instant::now();
                    let line = format!("concurrent {i}");
                    let r = post_compact(agg, "other", "/y", "g", i, &[line.as_bytes()]);
                    assert_eq!(r.status, 503, "{}", r.text());
                    t.elapsed()
                })
            })
            .collect();
        posts.into_iter().map(|h| h.join().expect("post")).max()
    });
    assert!(
        slowest.is_some_and(|d| d < Duration::from_secs(8)),
        "slowest 503 took {slowest:?}"
    );
    let r = get(&agg.url("/store/hosts"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(get(&agg.url("/readyz")).status, 503);
    // Lines keep coming while the store is down; the agent's memory stays bounded.
    let rss_before = agent.proc.rss();
    for (i, f) in files.iter().enumerate() {
        append_lines(f, &format!("outage {i}"), 0..5000);
    }
    while down_at.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            agent.proc.rss() < rss_before + (64 << 20),
            "agent RSS grew from {rss_before} to {}",
            agent.proc.rss()
        );
    }
    cluster.restart_stopped();
    assert!(
        cluster.wait_ok(Duration::from_secs(60)),
        "cluster did not come back"
    );
    assert_all_shipped(&agg, "h", &files, Duration::from_secs(60));
    assert_eq!(get(&agg.url("/readyz")).status, 200);
}

#[test]
fn retention_on_redis_drops_expired_generations_and_frees_their_memory() {
    let cluster = RedisCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = node_with_env(
        &cluster,
        dir.path(),
        &[
            ("AGGREGATOR_STORE__RETENTION", "4s"),
            ("AGGREGATOR_STORE__SWEEP_INTERVAL", "500ms"),
        ],
    );
    let baseline = cluster.used_memory();
    let keys_before = cluster.keys();
    let line = vec![b'x'; 1000];
    for batch in 0..40u64 {
        let lines: Vec<&[u8]> = (0..1000).map(|_| line.as_slice()).collect();
        let r = post_compact(&agg, "h", "/old", "g", batch * 1000, &lines);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let full = cluster.used_memory();
    assert!(
        full > baseline + (40 << 20),
        "40 MB stored but memory went {baseline} -> {full}"
    );
    // A generation kept alive by writes survives the same sweeps.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    let gone = loop {
        assert_eq!(
            post_compact(&agg, "h", "/live", "g", n, &[b"tick"]).status,
            200
        );
        n += 1;
        if get(&agg.url("/store/files?host=h")).json()["files"]
            .as_array()
            .is_some_and(|f| f.len() == 1 && f[0]["file"] == "/live")
        {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(gone, "the expired generation was not dropped");
    assert_eq!(agg.log("h", "/old", ""), Err(404));
    let live = agg.log("h", "/live", "").expect("live file kept");
    assert_eq!(live, "tick\n".repeat(n as usize).as_bytes());
    let after = cluster.used_memory();
    assert!(
        after < baseline + (4 << 20),
        "memory not given back: baseline {baseline}, full {full}, after {after}"
    );
    // Only the live generation's keys (and the index) remain.
    assert!(
        cluster.keys() < keys_before + 20,
        "keys left: {} (before {keys_before})",
        cluster.keys()
    );
}

#[test]
fn max_disk_bytes_on_redis_bounds_the_primaries_memory_dropping_the_oldest_first() {
    let cluster = RedisCluster::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let baseline = cluster.used_memory();
    let budget = baseline + (30 << 20);
    let agg = node_with_env(
        &cluster,
        dir.path(),
        &[
            ("AGGREGATOR_STORE__MAX_DISK_BYTES", &budget.to_string()),
            ("AGGREGATOR_STORE__SWEEP_INTERVAL", "300ms"),
        ],
    );
    let line = vec![b'm'; 1000];
    let lines: Vec<&[u8]> = (0..1000).map(|_| line.as_slice()).collect();
    // Three files of 15 MB, oldest first: together over the budget.
    for file in ["/first", "/second", "/third"] {
        for batch in 0..15u64 {
            let r = post_compact(&agg, "h", file, "g", batch * 1000, &lines);
            assert_eq!(r.status, 200, "{}", r.text());
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    let listed = || -> Vec<String> {
        get(&agg.url("/store/files?host=h")).json()["files"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(|f| f["file"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(20), || !listed()
            .contains(&"/first".to_owned())
            && cluster.used_memory() <= budget),
        "over the budget: {} of {budget} bytes, files {:?}",
        cluster.used_memory(),
        listed()
    );
    // The newest file is whole; the oldest went first.
    let third = agg.log("h", "/third", "").expect("newest kept");
    assert_eq!(third.len(), 15_000 * 1001);
    assert_eq!(agg.log("h", "/first", ""), Err(404));
}
