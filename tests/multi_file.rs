//! Issue 35: one request for many files. The agent joins batches of different files into
//! one multi-file request (`LSB2`), each line with the time the agent read it; the
//! aggregator stores the request with one write and answers per section, a bad section
//! refused alone. Old and new meet both ways: an old-form body (`LSB1`) is taken by a new
//! aggregator, and a new agent falls back to one file per request with an aggregator that
//! does not announce the new form.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use logship_e2e::*;
use logship_wire::multi;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// The `ts` of every line of `file` (ndjson download).
fn times(agg: &Aggregator, file: &str) -> Vec<u64> {
    let body = agg
        .log("h", file, "&format=ndjson")
        .expect("ndjson download");
    String::from_utf8_lossy(&body)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("line").is_some())
        .map(|v| {
            let t = v["ts"].as_str().expect("every line has a ts");
            humantime::parse_rfc3339(t)
                .unwrap_or_else(|e| panic!("{t:?}: {e}"))
                .duration_since(UNIX_EPOCH)
                .expect("after the epoch")
                .as_millis() as u64
        })
        .collect()
}

fn files(logs: &Path, n: usize, lines: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(logs).expect("mkdir");
    (0..n)
        .map(|i| {
            let f = logs.join(format!("m{i:02}.log"));
            append_lines(&f, &format!("file {i} line"), 0..lines);
            f
        })
        .collect()
}

fn dead_letters(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("state/dead-letter")).map_or(0, |d| d.count())
}

logship_e2e::both_backends!(
    files_read_during_an_outage_arrive_in_joined_requests_with_the_time_they_were_read
);

/// 40 files are read while the aggregator is down; when it comes up, their batches arrive
/// joined (several files per request) and every file downloads byte-identical, each line
/// stamped with the time the agent read it: before the aggregator even started.
fn files_read_during_an_outage_arrive_in_joined_requests_with_the_time_they_were_read(
    backend: Backend,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = files(&dir.path().join("logs"), 40, 500);
    let addr = free_addr();
    let metrics = free_addr();
    let cfg = agent_config(
        dir.path(),
        &format!("http://{addr}/store/batch"),
        "h",
        &[&format!("{}/*.log", dir.path().join("logs").display())],
        &format!("metrics_listen = {metrics:?}"),
        "",
    );
    let agent_started = now_ms();
    let _agent = Agent::start(&cfg);
    // Every file's first batch was read and failed to go at least once.
    assert!(
        wait_until(Duration::from_secs(30), || agent_metric(
            &metrics,
            "agent_retries_total"
        ) >= 40.0),
        "the agent did not try to send"
    );
    let read_by = now_ms();
    assert!(wait_until(Duration::from_secs(5), || now_ms() > read_by + 300));
    let agg_cfg = dir.path().join("agg.toml");
    std::fs::write(&agg_cfg, backend.store_toml()).expect("write aggregator config");
    let up = now_ms();
    let agg = Aggregator::start_on(
        &dir.path().join("data"),
        &addr,
        &["--config", &agg_cfg.to_string_lossy()],
    );
    assert_all_shipped(&agg, "h", &files, Duration::from_secs(60));
    for f in &files {
        let ts = times(&agg, &f.to_string_lossy());
        assert_eq!(ts.len(), 500);
        assert!(
            ts.iter().all(|&t| (agent_started..up).contains(&t)),
            "{}: times {:?}..{:?} are not the read times ({agent_started}..{up})",
            f.display(),
            ts.iter().min(),
            ts.iter().max()
        );
    }
    let requests = agent_metric(&metrics, "agent_joined_requests_total");
    let batches = agent_metric(&metrics, "agent_joined_batches_total");
    // Retries are jittered and a batch goes alone when a request slot is free, so how
    // many share a request varies (1.99 per request in one CI run against the 2.0 this
    // asked before); without joining it is exactly 1.
    assert!(
        requests >= 1.0 && batches >= 1.25 * requests,
        "{batches} batches in {requests} joined requests: files did not share requests"
    );
    assert_eq!(dead_letters(dir.path()), 0);
}

/// An aggregator that takes one file per request (an older release, here
/// `multi_file_bodies = false`) gets the old form from a new agent: byte-identical, nothing
/// refused, nothing dead-lettered; and it announces no new form.
#[test]
fn a_new_agent_sends_one_file_per_request_to_an_aggregator_without_the_new_form() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(dir.path(), "multi_file_bodies = false\n");
    assert!(get(&agg.url("/ruok")).header("x-logship-accept").is_none());
    let files = files(&dir.path().join("logs"), 12, 300);
    let (_agent, metrics) = agent_with_metrics(dir.path(), &agg, &dir.path().join("logs"), "", "");
    assert_all_shipped(&agg, "h", &files, Duration::from_secs(60));
    assert_eq!(dead_letters(dir.path()), 0);
    assert_eq!(agent_metric(&metrics, "agent_dead_letters_total"), 0.0);
    // It refused the first requests in the new form (at most one per request slot taken
    // before the first refusal came back), and took everything after in the old one.
    let m = get(&agg.url("/metrics")).text();
    let refused: f64 = m
        .lines()
        .filter(|l| l.starts_with("aggregator_http_requests_total{"))
        .filter(|l| l.contains("route=\"batch\"") && l.contains("code=\"400\""))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    eprintln!("requests in the new form refused by the old-form aggregator: {refused}");
    assert!(
        (1.0..=12.0).contains(&refused),
        "{refused} requests refused with 400"
    );
}

/// A body in the old form (one file, no times: what agents before this release send) is
/// stored as before; every answer of `/store/batch`, `/ruok` and `/readyz` names the forms.
#[test]
fn an_old_form_body_is_still_stored_and_the_forms_are_announced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let before = now_ms();
    let a = post_compact(&agg, "h", "/old.log", "g", 0, &[b"one", b"\xfftwo"]);
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-logship-accept"), Some("LSB1, LSB2"));
    assert_eq!(
        agg.log("h", "/old.log", "").expect("stored"),
        b"one\n\xfftwo\n"
    );
    // Stamped on receipt.
    assert!(times(&agg, "/old.log")
        .iter()
        .all(|&t| t >= before && t <= now_ms()));
    for path in ["/ruok", "/readyz"] {
        assert_eq!(
            get(&agg.url(path)).header("x-logship-accept"),
            Some("LSB1, LSB2"),
            "{path}"
        );
    }
}

logship_e2e::both_backends!(a_section_that_cannot_be_stored_is_refused_alone);

/// Four files in one request: one with a control character in its generation (400), one
/// with a line over `max_line_bytes` (413); the other two are stored, each line with the
/// time it carries, and a time in the future is replaced by the time of receipt.
fn a_section_that_cannot_be_stored_is_refused_alone(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = backend.aggregator(dir.path(), "[limits]\nmax_line_bytes = \"1KiB\"\n", &[]);
    let read = now_ms() - 60_000;
    let section = |file: &str, generation: &str, lines: &[&[u8]], ms: u64| {
        let mut w = multi::Writer::new("h", file, generation, 0, ms);
        for (i, l) in lines.iter().enumerate() {
            w.push(l, false, ms + i as u64);
        }
        w.finish()
    };
    let long = vec![b'x'; 2048];
    let future = now_ms() + 86_400_000;
    let bodies = [
        section("/a.log", "g", &[b"a0", b"a1", b"\xffa2"], read),
        section("/b.log", "bad\ngeneration", &[b"b0"], read),
        section("/c.log", "g", &[b"c0", &long], read),
        section("/d.log", "g", &[b"d0", b"d1"], future),
    ];
    let body = multi::join("h", bodies.iter().map(|b| &b[..]));
    let before = now_ms();
    let a = post(
        &agg.url("/store/batch"),
        &body,
        &[("Content-Type", logship_wire::COMPACT_CONTENT_TYPE)],
    );
    let after = now_ms();
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(v["stored"], 5, "{v}");
    let sections = v["sections"].as_array().expect("sections");
    assert_eq!(sections.len(), 4);
    assert_eq!(sections[0]["stored"], 3);
    assert_eq!(sections[1]["status"], 400);
    assert!(
        sections[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("generation")),
        "{v}"
    );
    assert_eq!(sections[2]["status"], 413);
    assert_eq!(sections[3]["stored"], 2);
    assert_eq!(agg.log("h", "/a.log", "").expect("a"), b"a0\na1\n\xffa2\n");
    assert_eq!(agg.log("h", "/d.log", "").expect("d"), b"d0\nd1\n");
    assert_eq!(agg.log("h", "/b.log", ""), Err(404));
    assert_eq!(agg.log("h", "/c.log", ""), Err(404));
    assert_eq!(times(&agg, "/a.log"), [read, read + 1, read + 2]);
    assert!(
        times(&agg, "/d.log")
            .iter()
            .all(|&t| (before..=after).contains(&t)),
        "a time in the future was kept"
    );
    // A body of one bad section is answered as a request of its own would be.
    let one = section("/e.log", "g", &[&long], read);
    assert_eq!(
        post(
            &agg.url("/store/batch"),
            &one,
            &[("Content-Type", logship_wire::COMPACT_CONTENT_TYPE)]
        )
        .status,
        413
    );
    // A body cut inside a section is refused whole, and harms nothing stored.
    let cut = &body[..body.len() - 3];
    let a = post(
        &agg.url("/store/batch"),
        cut,
        &[("Content-Type", logship_wire::COMPACT_CONTENT_TYPE)],
    );
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(agg.log("h", "/a.log", "").expect("a"), b"a0\na1\n\xffa2\n");
}
