//! Issue 7: live tail over `follow=true`, with the real binaries.

use std::time::{Duration, Instant};

use logship_e2e::*;

#[test]
fn follow_streams_each_appended_line_once_in_order_across_a_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    // linger 50ms (agent_config's default for tests)
    let (agg, logs, cfg) = start_pair(dir.path(), "", "rotate_wait = \"300ms\"");
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
