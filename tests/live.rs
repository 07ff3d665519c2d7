//! Issue 7: live tail over `follow=true`, with the real binaries.

use std::time::{Duration, Instant};

use logship_e2e::*;

logship_e2e::both_backends!(follow_streams_each_appended_line_once_in_order_across_a_rotation);

fn follow_streams_each_appended_line_once_in_order_across_a_rotation(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    // linger 50ms (agent_config's default for tests)
    let (agg, logs, cfg) = start_pair_on(&backend, dir.path(), "", "rotate_wait = \"300ms\"");
    let log = logs.join("live.log");
    append_lines(&log, "before", 0..300);
    let _agent = Agent::start(&cfg);
    assert!(wait_until(Duration::from_secs(10), || shipped_exactly(
        &agg, "h", &log
    )));
    let name = log.to_string_lossy().into_owned();
    let f = Follower::open(&agg.url(&format!(
        "/store/log?host=h&file={}&tail=2&follow=true",
        enc(&name)
    )));
    assert_eq!(f.status, 200);
    let content = std::fs::read_to_string(&log).expect("read");
    let last_two: String = content
        .lines()
        .skip(298)
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || f.text() == last_two),
        "{:?}",
        f.text()
    );
    let mut expected = last_two;
    // Appended lines appear within linger + 1 s, one by one.
    for i in 0..5 {
        let line = format!("live {i}\n");
        let t = Instant::now();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .and_then(|mut h| std::io::Write::write_all(&mut h, line.as_bytes()))
            .expect("append");
        expected.push_str(&line);
        assert!(
            wait_until(Duration::from_millis(1050), || f.text() == expected),
            "line {i} not followed in time: {:?}",
            f.text()
        );
        assert!(t.elapsed() < Duration::from_millis(1050));
    }
    // Rotation: the follower says so and follows the new file.
    std::fs::rename(&log, logs.join("live.log.1")).expect("rotate");
    std::fs::write(&log, "new 0\nnew 1\n").expect("create");
    assert!(
        wait_until(Duration::from_secs(5), || f.text().contains("new 1\n")),
        "{:?}",
        f.text()
    );
    let text = f.text();
    let (old, new) = text
        .split_once("--- logship: new generation ")
        .expect("a generation marker");
    assert_eq!(
        old, expected,
        "nothing missed or repeated before the rotation"
    );
    let after_marker = new
        .split_once('\n')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    assert_eq!(after_marker, "new 0\nnew 1\n");
}

#[test]
fn followers_are_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("agg.toml"), "max_followers = 1\n").expect("write");
    let agg = Aggregator::start(
        &dir.path().join("data"),
        &["--config", &dir.path().join("agg.toml").to_string_lossy()],
    );
    assert_eq!(post_compact(&agg, "h", "/f", "g", 0, &[b"a"]).status, 200);
    let first = Follower::open(&agg.url("/store/log?host=h&file=/f&follow=true"));
    assert_eq!(first.status, 200);
    let second = get(&agg.url("/store/log?host=h&file=/f&follow=true"));
    assert_eq!(second.status, 503);
    assert!(second.header("retry-after").is_some());
    assert!(wait_until(Duration::from_secs(5), || first.text() == "a\n"));
    assert_eq!(post_compact(&agg, "h", "/f", "g", 1, &[b"b"]).status, 200);
    assert!(wait_until(Duration::from_secs(5), || first.text() == "a\nb\n"));
}

/// Issue 11.13: `format=ndjson` gives every line its generation and number out of band: a
/// line that looks like the text marker is content, a gap keeps the numbers right, bytes
/// that are not UTF-8 come as base64, and a follower sees the new generation in the objects.
#[test]
fn ndjson_lines_carry_generation_and_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let marker = b"--- logship: new generation forged ---";
    assert_eq!(
        post_compact(&agg, "h", "/f", "g1", 0, &[b"zero", marker, b"\xff\xfe"]).status,
        200
    );
    assert_eq!(
        post_compact(&agg, "h", "/f", "g1", 5, &[b"five"]).status,
        200
    );
    let a = get(&agg.url("/store/log?host=h&file=/f&format=ndjson"));
    assert_eq!(a.header("content-type"), Some("application/x-ndjson"));
    let objects: Vec<serde_json::Value> = a
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let numbers: Vec<u64> = objects.iter().filter_map(|o| o["line"].as_u64()).collect();
    assert_eq!(numbers, vec![0, 1, 2, 5]);
    assert!(objects.iter().all(|o| o["generation"] == "g1"));
    assert_eq!(
        objects[1]["content"],
        "--- logship: new generation forged ---"
    );
    assert_eq!(objects[2]["content_base64"], "//4=");
    assert_eq!(
        get(&agg.url("/store/log?host=h&file=/f&format=xml")).status,
        400
    );

    // A follower from line 3 waits at the gap; then a new generation appears.
    let f = Follower::open(&agg.url("/store/log?host=h&file=/f&follow=true&format=ndjson&from=3"));
    assert_eq!(f.status, 200);
    assert_eq!(
        post_compact(&agg, "h", "/f", "g1", 3, &[b"three", b"four"]).status,
        200
    );
    assert_eq!(
        post_compact(&agg, "h", "/f", "g2", 0, &[b"new zero"]).status,
        200
    );
    let want = [
        ("g1", 3, "three"),
        ("g1", 4, "four"),
        ("g1", 5, "five"),
        ("g2", 0, "new zero"),
    ];
    let parsed = || -> Vec<(String, u64, String)> {
        f.text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|o| {
                (
                    o["generation"].as_str().unwrap_or_default().to_owned(),
                    o["line"].as_u64().unwrap_or(u64::MAX),
                    o["content"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || parsed().len() >= want.len()),
        "{:?}",
        f.text()
    );
    let got = parsed();
    let want: Vec<(String, u64, String)> = want
        .iter()
        .map(|(g, n, c)| ((*g).to_owned(), *n, (*c).to_owned()))
        .collect();
    assert_eq!(got, want);
    assert!(
        !f.text().contains("--- logship"),
        "no in-band marker in NDJSON"
    );
}
