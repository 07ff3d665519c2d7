//! Issue 5 (part): overload. Several agents against a small connection cap and a per-host
//! rate limit: they get 503/429 with Retry-After, back off, and deliver everything; the
//! server's memory stays bounded.

use std::path::PathBuf;
use std::time::Duration;

use logship_e2e::*;

#[test]
fn agents_back_off_under_429_and_503_and_deliver_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("agg.toml"),
        "max_connections = 2\n[limits]\nper_host_lines_per_sec = 3000\n",
    )
    .expect("write");
    let agg = Aggregator::start(
        &dir.path().join("data"),
        &["--config", &dir.path().join("agg.toml").to_string_lossy()],
    );
    let mut agents = Vec::new();
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for a in 0..4 {
        let adir = dir.path().join(format!("agent{a}"));
        let logs = adir.join("logs");
        std::fs::create_dir_all(&logs).expect("mkdir");
        for f in 0..2 {
            let p = logs.join(format!("f{f}.log"));
            append_lines(&p, &format!("agent {a} file {f}"), 0..2000);
            files.push((format!("host-{}", a % 2), p));
        }
        let cfg = agent_config(
            &adir,
            &agg.url("/store/batch"),
            &format!("host-{}", a % 2),
            &[&format!("{}/*.log", logs.display())],
            "[limits]\nmax_in_flight = 1",
            "batch_lines = 500",
        );
        agents.push(Agent::start(&cfg));
    }
    let mut peak = 0;
    // Poll with one light request: the test's own requests also count against the cap.
    let total = || -> u64 {
        let a = get(&agg.url("/store/files"));
        if a.status != 200 {
            return 0;
        }
        a.json()["files"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| f["generations"][0]["lines"].as_u64().unwrap_or(0))
            .sum()
    };
    let done = wait_until(Duration::from_secs(240), || {
        peak = peak.max(agg.proc.rss());
        std::thread::sleep(Duration::from_millis(200));
        total() == 16_000
    }) && wait_until(Duration::from_secs(60), || {
        // The test's own downloads may get a 503 from the cap too: retry them.
        files.iter().all(|(h, p)| shipped_exactly(&agg, h, p))
    });
    assert!(done, "not everything delivered under overload");
    // Stop the agents so the checks below are not themselves refused by the cap.
    drop(agents);
    assert!(wait_until(Duration::from_secs(10), || get(
        &agg.url("/ruok")
    )
    .status
        == 200));
    let m = get(&agg.url("/metrics")).text();
    assert!(
        metric(&m, "aggregator_errors_total{kind=\"rate_limited\"}") > 0.0,
        "no 429 was needed: {m}"
    );
    // More agents than the cap: idle connections were closed to make room, and busy ones
    // made new clients wait with a 503 (its form is checked in aggregator_api).
    assert!(
        metric(&m, "aggregator_connections_rejected_total")
            + metric(&m, "aggregator_connections_reclaimed_total")
            > 0.0,
        "the connection cap was never reached: {m}"
    );
    assert!(peak < 256 << 20, "aggregator RSS {} MiB", peak >> 20);
    // One generation of exactly 2000 lines per file: nothing duplicated. (Retried: a check
    // can still meet the cap while the server notices the closed agent connections.)
    let one_generation_each = || {
        files.iter().all(|(h, p)| {
            let g = generations(&agg, h, &p.to_string_lossy());
            g.len() == 1 && g[0].1 == 2000
        })
    };
    assert!(
        wait_until(Duration::from_secs(20), one_generation_each),
        "a file has more than one generation or a wrong line count"
    );
}

/// Reads one response from a keep-alive connection: head, then `Content-Length` bytes.
fn read_response(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read head");
        assert_eq!(n, 1, "connection closed mid-head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("body");
    format!("{head}{}", String::from_utf8_lossy(&body))
}

#[test]
fn at_the_cap_an_idle_keep_alive_connection_makes_room() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("agg.toml"), "max_connections = 2\n").expect("write");
    let agg = Aggregator::start(
        &dir.path().join("data"),
        &["--config", &dir.path().join("agg.toml").to_string_lossy()],
    );
    // Two clients that made a request and keep their connections open, idle.
    let mut idle: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(agg.addr()).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(b"GET /ruok HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("send");
            assert!(read_response(&mut s).ends_with("imok"));
            s
        })
        .collect();
    // A third client is served, not refused: the longest-idle connection made room.
    let a = get(&agg.url("/ruok"));
    assert_eq!(a.status, 200, "{}", a.text());
    // The first idle connection was closed cleanly (EOF, no answer); the second still works.
    let mut rest = Vec::new();
    let n = idle[0].read_to_end(&mut rest).expect("clean close");
    assert_eq!(n, 0, "got {:?}", String::from_utf8_lossy(&rest));
    idle[1]
        .write_all(b"GET /ruok HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    assert!(read_response(&mut idle[1]).ends_with("imok"));
    let m = get(&agg.url("/metrics")).text();
    assert!(
        metric(&m, "aggregator_connections_reclaimed_total") >= 1.0,
        "{m}"
    );
}
