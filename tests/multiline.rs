//! Issue 34.7: multi-line events. With `multiline = { start = … }` a Java stack trace, a
//! Python traceback and a Go panic each travel as one event to the sinks that carry events
//! (Loki: one entry each), while the file is still stored line by line, byte-exact, by our
//! aggregator; an event's last line waits at most `timeout` for more.

use std::path::Path;
use std::time::Duration;

use logship_e2e::*;

const LOG: &str = "2026-12-08T10:00:00Z INFO service started\n\
2026-12-08T10:00:01Z ERROR request failed\n\
java.lang.IllegalStateException: no connection\n\
\tat com.example.Pool.take(Pool.java:42)\n\
\tat com.example.Api.handle(Api.java:17)\n\
Caused by: java.net.ConnectException: refused\n\
\t... 2 more\n\
2026-12-08T10:00:02Z ERROR job crashed\n\
Traceback (most recent call last):\n\
  File \"/app/job.py\", line 8, in <module>\n\
    run()\n\
ValueError: bad input\n\
2026-12-08T10:00:03Z FATAL worker died\n\
panic: runtime error: index out of range [5] with length 3\n\
\n\
goroutine 1 [running]:\n\
main.main()\n\
\t/app/main.go:5 +0x1d\n\
2026-12-08T10:00:04Z INFO last line\n";

/// An agent config shipping `dir/logs/*.log` as `host` to `url` through a `kind` sink,
/// with events starting at a timestamp.
fn config(dir: &Path, host: &str, kind: &str, url: &str) -> std::path::PathBuf {
    let text = format!(
        "host = {host:?}\nstate_dir = {:?}\npoll_interval = \"500ms\"\n[sink]\ntype = {kind:?}\nurl = {url:?}\n[defaults]\nlinger = \"50ms\"\nretry = {{ initial = \"20ms\", max = \"300ms\" }}\n[[sources]]\npaths = [{:?}]\nmultiline = {{ start = '^\\d{{4}}-\\d{{2}}-\\d{{2}}T', max_lines = 100, timeout = \"300ms\" }}\n",
        dir.join("state").to_string_lossy(),
        dir.join("logs").join("*.log").to_string_lossy(),
    );
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).expect("write agent config");
    p
}

/// How many lines (entries) a stored stream has.
fn stored_lines(agg: &Aggregator, host: &str, file: &str) -> usize {
    agg.log(host, file, "&format=ndjson")
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v.get("line").is_some())
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn stack_traces_travel_as_one_event_and_the_file_is_still_stored_line_by_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let events = LOG.lines().filter(|l| l.starts_with("2026-")).count();
    let lines = LOG.lines().count();
    for (host, kind, path) in [
        ("via-loki", "loki", "/loki/api/v1/push"),
        ("via-aggregator", "aggregator", "/store/batch"),
    ] {
        let d = dir.path().join(host);
        std::fs::create_dir_all(d.join("logs")).expect("mkdir");
        let file = d.join("logs").join("app.log");
        std::fs::write(&file, LOG).expect("write log");
        let _agent = Agent::start(&config(&d, host, kind, &agg.url(path)));
        let name = file.to_string_lossy().into_owned();
        // Both downloads are the file, byte for byte: an event is its lines joined by `\n`.
        assert!(
            wait_until(Duration::from_secs(30), || agg.log(host, &name, "").ok()
                == Some(LOG.as_bytes().to_vec())),
            "{kind}: not shipped exactly: {:?}",
            agg.log(host, &name, "")
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        );
        let want = if kind == "loki" { events } else { lines };
        assert_eq!(
            stored_lines(&agg, host, &name),
            want,
            "{kind}: one entry an event through Loki, one line a line through the aggregator"
        );
    }
}

/// `/store/search?…&events=true`: a match comes with its whole event — from the line that
/// starts it (a timestamp, by default; `event_start=` for another rule) to the next start
/// — so a search for the exception's cause finds the whole stack trace.
#[test]
fn a_search_by_event_returns_the_whole_event_around_a_match() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let lines: Vec<&[u8]> = LOG.lines().map(str::as_bytes).collect();
    assert_eq!(
        post_compact(&agg, "h", "/app.log", "g", 0, &lines).status,
        200
    );
    let search = |q: &str| -> Vec<(u64, bool)> {
        let body = get(&agg.url(&format!("/store/search?file=/app.log&{q}"))).text();
        body.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("line").is_some())
            .map(|v| {
                (
                    v["line"].as_u64().expect("line"),
                    v["context"].as_bool().unwrap_or(false),
                )
            })
            .collect()
    };
    // The cause, in the middle of the Java stack trace: lines 1..=6, the match at 5.
    assert_eq!(
        search("q=ConnectException&events=true"),
        [
            (1, true),
            (2, true),
            (3, true),
            (4, true),
            (5, false),
            (6, true)
        ]
    );
    // The Go panic, with its empty line: lines 12..=17.
    assert_eq!(
        search("q=out%20of%20range&events=true"),
        [
            (12, true),
            (13, false),
            (14, true),
            (15, true),
            (16, true),
            (17, true)
        ]
    );
    // A one-line event, and two matches in one event written once.
    assert_eq!(search("q=service%20started&events=true"), [(0, false)]);
    assert_eq!(
        search("q=File%20%22%2Fapp%7Crun%5C(%5C)&regex=true&events=true"),
        [(7, true), (8, true), (9, false), (10, false), (11, true)]
    );
    // Another rule: events start at a line without leading whitespace.
    assert_eq!(
        search("q=Pool.take&event_start=%5E%5CS"),
        [(2, true), (3, false), (4, true)]
    );
    // Not together with context, nor with a sorted order.
    assert_eq!(
        get(&agg.url("/store/search?q=x&events=true&context=1")).status,
        400
    );
    assert_eq!(
        get(&agg.url("/store/search?q=x&events=true&order=newest")).status,
        400
    );
}
