//! Issue 29.1–29.2: a search costs bounded memory whatever its client does, and a client
//! that stops reading cannot keep a search (and its `search.max_searches` slot) for good.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use logship_e2e::*;

const MIB: u64 = 1 << 20;

/// 256 files of 900 one-byte lines under 4 KB names: a search for `a` renders ~1 GB of
/// results from 1.6 MB stored (each result line repeats its file's name).
fn many_generations_with_long_names(agg: &Aggregator) {
    let lines: Vec<Vec<u8>> = (0..900).map(|_| b"a".to_vec()).collect();
    let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    for f in 0..256 {
        let name = format!("/{f:03}/{}", "n".repeat(4090));
        let a = post_compact(agg, "h", &name, "g", 0, &refs);
        assert_eq!(a.status, 200, "{}", a.text());
    }
}

/// A search request from a socket that never reads its answer.
fn stalled_search(agg: &Aggregator, query: &str) -> TcpStream {
    let mut s = TcpStream::connect(agg.addr()).expect("connect");
    s.write_all(format!("GET /store/search?{query} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("send");
    s
}

fn searches_running(agg: &Aggregator) -> f64 {
    metric(
        &get(&agg.url("/metrics")).text(),
        "aggregator_searches_running",
    )
}

#[test]
fn a_search_whose_client_does_not_read_holds_little_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(dir.path(), "[search]\ntimeout = \"30s\"\n");
    many_generations_with_long_names(&agg);
    let quiet = agg.proc.rss();
    let stalled: Vec<TcpStream> = (0..4)
        .map(|_| stalled_search(&agg, "q=a&limit=100000"))
        .collect();
    // Sample while the searches run as far as they can (each ran ahead by ~1 GB before).
    let until = Instant::now() + Duration::from_secs(6);
    let mut peak = quiet;
    while Instant::now() < until {
        peak = peak.max(agg.proc.rss());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        peak < quiet + 64 * MIB,
        "4 searches that are not read grew the server from {} to {} MiB",
        quiet / MIB,
        peak / MIB
    );
    assert_eq!(
        searches_running(&agg),
        4.0,
        "the searches are still running"
    );
    drop(stalled);
    assert!(
        wait_until(Duration::from_secs(10), || searches_running(&agg) == 0.0),
        "the searches did not end when their clients went"
    );
    assert!(
        wait_until(Duration::from_secs(10), || agg.proc.rss()
            < quiet + 32 * MIB),
        "memory stayed at {} MiB after the searches ended (was {})",
        agg.proc.rss() / MIB,
        quiet / MIB
    );
    // And a search that is read gets every match.
    let a = get(&agg.url("/store/search?q=a&limit=100000&file=/000/*"));
    assert_eq!(a.status, 200);
    assert_eq!(a.text().lines().count(), 901, "900 matches and the summary");
}

#[test]
fn a_stalled_search_ends_within_its_timeout_and_frees_its_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(dir.path(), "[search]\ntimeout = \"2s\"\nmax_searches = 4\n");
    many_generations_with_long_names(&agg);
    let started = Instant::now();
    let stalled: Vec<TcpStream> = (0..4)
        .map(|_| stalled_search(&agg, "q=a&limit=100000"))
        .collect();
    // The four hold every slot while they run...
    assert!(
        wait_until(Duration::from_secs(5), || searches_running(&agg) == 4.0),
        "the stalled searches did not start"
    );
    let busy = get(&agg.url("/store/search?q=zz"));
    assert_eq!(busy.status, 503, "{}", busy.text());
    // ...and no longer than their timeout (2 s) plus a little: then others get answers.
    assert!(
        wait_until(Duration::from_secs(20), || searches_running(&agg) == 0.0),
        "stalled searches still hold their slots after {:?}",
        started.elapsed()
    );
    let freed = started.elapsed();
    assert!(
        freed < Duration::from_secs(8),
        "slots freed after {freed:?}"
    );
    let a = get(&agg.url("/store/search?q=zz"));
    assert_eq!(a.status, 200, "{}", a.text());
    drop(stalled);
}
