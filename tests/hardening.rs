//! Issue 11: small requests must not cost the aggregator large memory or CPU. Each test
//! sends what a hostile client would, against the real binary, and asserts its memory from
//! `/proc` and that it keeps serving.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use logship_e2e::*;

const MIB: u64 = 1 << 20;

fn zstd_json(entries: impl Iterator<Item = String>) -> Vec<u8> {
    let mut enc = zstd::Encoder::new(Vec::new(), 3).expect("zstd");
    enc.write_all(br#"{"batch":["#).expect("write");
    for (i, e) in entries.enumerate() {
        if i > 0 {
            enc.write_all(b",").expect("write");
        }
        enc.write_all(e.as_bytes()).expect("write");
    }
    enc.write_all(b"]}").expect("write");
    enc.finish().expect("zstd")
}

fn entry(host: &str, file: &str, n: u64, content: &str) -> String {
    format!(r#"{{"host":"{host}","file":"{file}","line-num":{n},"content":"{content}"}}"#)
}

fn post_zstd(agg: &Aggregator, body: &[u8], content_type: &str) -> Answer {
    post(
        &agg.url("/store/batch"),
        body,
        &[("Content-Type", content_type), ("Content-Encoding", "zstd")],
    )
}

fn rss_settles_below(agg: &Aggregator, limit: u64) -> bool {
    wait_until(Duration::from_secs(10), || agg.proc.rss() < limit)
}

/// 11.3: sparse line numbers (one bucket per line) and a tiny body of millions of empty
/// lines are refused with a 413 before they cost memory; a request at the limits is stored
/// in bounded chunks and memory comes back.
#[test]
fn sparse_and_huge_line_counts_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    assert_eq!(
        post_compact(&agg, "h", "/warm", "g", 0, &[b"warm up"]).status,
        200
    );
    let before = agg.proc.rss();

    // 1M lines 128 apart in ~1 MB of zstd: every line its own bucket.
    let sparse = zstd_json((0..1_000_000u64).map(|i| entry("h", "/sparse", i * 128, "x")));
    assert!(sparse.len() < 2 * MIB as usize, "{} bytes", sparse.len());
    let a = post_zstd(&agg, &sparse, "application/json");
    assert_eq!(a.status, 413, "{}", a.text());
    assert!(
        a.json()["error"]
            .as_str()
            .is_some_and(|m| m.contains("lines")),
        "{}",
        a.text()
    );

    // 16M empty lines in a few hundred bytes (compact form, zstd).
    let mut w = logship_wire::compact::Writer::new("h", "/empty", "g", 0);
    for _ in 0..16_000_000 {
        w.push(b"", false);
    }
    let empty = zstd::encode_all(&w.finish()[..], 19).expect("zstd");
    assert!(empty.len() < 4096, "{} bytes", empty.len());
    let a = post_zstd(&agg, &empty, logship_wire::COMPACT_CONTENT_TYPE);
    assert_eq!(a.status, 413, "{}", a.text());

    // Within the line limit but spread over 10,000 buckets.
    let spread = zstd_json((0..10_000u64).map(|i| entry("h", "/spread", i * 128, "x")));
    let a = post_zstd(&agg, &spread, "application/json");
    assert_eq!(a.status, 413, "{}", a.text());
    assert!(a.text().contains("max_buckets_per_request"), "{}", a.text());

    // At the limit (2,000 buckets): stored, in chunks, and every line reads back.
    let ok = zstd_json((0..2_000u64).map(|i| entry("h", "/ok", i * 128, &format!("l{i}"))));
    let a = post_zstd(&agg, &ok, "application/json");
    assert_eq!(a.status, 200, "{}", a.text());
    let want: String = (0..2_000).map(|i| format!("l{i}\n")).collect();
    assert_eq!(agg.log("h", "/ok", "").expect("stored"), want.into_bytes());
    // Repeats do not accumulate.
    for _ in 0..3 {
        assert_eq!(post_zstd(&agg, &sparse, "application/json").status, 413);
        assert_eq!(post_zstd(&agg, &ok, "application/json").status, 200);
    }
    assert!(
        rss_settles_below(&agg, 2 * before.max(16 * MIB)),
        "RSS {} MiB after, {} MiB before (peak {} MiB)",
        agg.proc.rss() / MIB,
        before / MIB,
        agg.proc.peak_rss() / MIB
    );
    assert!(
        agg.proc.peak_rss() < 400 * MIB,
        "peak {} MiB",
        agg.proc.peak_rss() / MIB
    );
    assert_eq!(get(&agg.url("/ruok")).text(), "imok");
    assert_workers_stay_free(&agg);
}

/// 11.6: no request kept a runtime worker thread busy for more than 10 ms in one poll
/// (what is CPU-heavy runs offloaded).
fn assert_workers_stay_free(agg: &Aggregator) {
    let bound = worker_busy_bound(agg);
    assert!(
        bound <= 0.01,
        "a request kept a worker busy up to {bound} s in one poll"
    );
}

logship_e2e::both_backends!(long_lines_are_capped_and_stalled_downloads_hold_little);

/// 11.4: lines over `limits.max_line_bytes` get a 413 naming the line; a file of very long
/// lines is served in small chunks, so stalled downloads hold little memory (on redis: a
/// big bucket is read in `GETRANGE` windows, never whole).
fn long_lines_are_capped_and_stalled_downloads_hold_little(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = backend.aggregator(dir.path(), "", &[]);
    let four_mib = vec![b'x'; 4 << 20];
    let mut w = logship_wire::compact::Writer::new("h", "/long", "g", 40);
    for _ in 0..8 {
        w.push(&four_mib, false);
    }
    let body = zstd::encode_all(&w.finish()[..], 3).expect("zstd");
    assert!(body.len() < 64 * 1024, "{} bytes", body.len());
    let a = post_zstd(&agg, &body, logship_wire::COMPACT_CONTENT_TYPE);
    assert_eq!(a.status, 413, "{}", a.text());
    let msg = a.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        msg.contains("line 40") && msg.contains("max_line_bytes"),
        "{msg}"
    );

    // One bucket of 128 lines of ~512 KiB (64 MiB), in eight requests.
    let line = |i: u64| format!("{i:04}{}", "y".repeat(512 * 1024 - 4)).into_bytes();
    for part in 0..8u64 {
        let lines: Vec<Vec<u8>> = (part * 16..part * 16 + 16).map(line).collect();
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let a = post_compact(&agg, "h", "/big", "g", part * 16, &refs);
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let quiet = agg.proc.rss();
    // Four downloads that never read.
    let stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(agg.addr()).expect("connect");
            s.write_all(b"GET /store/log?host=h&file=/big HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("send");
            s
        })
        .collect();
    // Give the server time to fill every buffer it will fill; then measure.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut peak = 0;
    while Instant::now() < deadline {
        peak = peak.max(agg.proc.rss());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        peak < quiet + 48 * MIB,
        "4 stalled downloads of a 64 MiB bucket grew the server from {} to {} MiB",
        quiet / MIB,
        peak / MIB
    );
    let want: Vec<u8> = (0..128)
        .flat_map(|i| [line(i), b"\n".to_vec()].concat())
        .collect();
    assert_eq!(agg.log("h", "/big", "").expect("download"), want);
    drop(stalled);

    // Four searches of the same bucket at once (issue 15): each reads it a chunk at a time,
    // never whole. One finds the line that ends the bucket.
    let quiet = agg.proc.rss();
    let peak = std::sync::atomic::AtomicU64::new(quiet);
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let searches: Vec<_> = ["zqzq", "zqzq", "zqzq", "0127y"]
            .into_iter()
            .map(|q| {
                let agg = &agg;
                s.spawn(move || get(&agg.url(&format!("/store/search?q={q}&file=/big"))))
            })
            .collect();
        while !searches.iter().all(|h| h.is_finished()) {
            peak.fetch_max(agg.proc.rss(), std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
        }
        searches
            .into_iter()
            .map(|h| h.join().expect("search"))
            .collect()
    });
    let peak = peak.into_inner();
    assert!(
        peak < quiet + 48 * MIB,
        "4 searches of a 64 MiB bucket grew the server from {} to {} MiB",
        quiet / MIB,
        peak / MIB
    );
    for (a, matches) in answers.iter().zip([0, 0, 0, 1]) {
        assert_eq!(a.status, 200);
        let summary = a
            .body
            .split(|&b| b == b'\n')
            .rfind(|l| !l.is_empty())
            .map(|l| serde_json::from_slice::<serde_json::Value>(l).expect("summary"))
            .expect("summary line");
        assert_eq!(summary["summary"]["matches"], matches, "{summary}");
    }
    assert_workers_stay_free(&agg);
}

/// 11.5: many concurrent JSON requests that expand in memory share one budget
/// (`limits.ingest_memory`): each is stored or told to retry (503 + Retry-After), and the
/// server's memory stays near the budget.
#[test]
fn concurrent_json_requests_share_the_ingest_memory_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(dir.path(), BUDGET_24MIB);
    let bodies: Vec<Vec<u8>> = (0..8)
        .map(|f| {
            zstd_json(
                (0..100_000u64).map(|i| entry("h", &format!("/j{f}"), i, &format!("{f} {i}"))),
            )
        })
        .collect();
    let quiet = agg.proc.rss();
    let retried = std::sync::atomic::AtomicU32::new(0);
    send_all_at_once(&bodies, &retried, 200, |body| {
        post_zstd(&agg, body, "application/json")
    });
    for f in 0..8 {
        let want: String = (0..100_000).map(|i| format!("{f} {i}\n")).collect();
        assert_eq!(
            agg.log("h", &format!("/j{f}"), "").expect("stored"),
            want.into_bytes()
        );
    }
    let peak = agg.proc.peak_rss();
    let retried = retried.into_inner();
    eprintln!(
        "8 × 100k-entry JSON requests: quiet {} MiB, peak {} MiB, {retried} retries",
        quiet / MIB,
        peak / MIB,
    );
    // The budget engaged (some requests were turned away to retry) and held. Measured: 45
    // MiB over quiet with the 24 MiB budget, 90 MiB and no retries with a 2 GiB one; the
    // bound is three budgets.
    assert!(
        retried > 0,
        "no request was refused: the budget never engaged"
    );
    assert!(
        peak < quiet + 72 * MIB,
        "peak RSS {} MiB over {} MiB quiet",
        peak / MIB,
        quiet / MIB
    );
    assert_workers_stay_free(&agg);
}

/// A 24 MiB ingest budget that a request waits for at most 20 ms: with the default 2 s wait
/// a fast machine lets every request queue for its share and none is ever refused, so the
/// tests could not tell whether the budget engaged (CI saw 0 retries once).
const BUDGET_24MIB: &str = "[limits]\ningest_memory = \"24MiB\"\ningest_memory_wait = \"20ms\"\n";

/// Sends every body from its own thread, all released together by a barrier so the requests
/// overlap, each until it is taken (see `send_until_taken`).
fn send_all_at_once(
    bodies: &[Vec<u8>],
    retried: &std::sync::atomic::AtomicU32,
    ok: u16,
    send: impl Fn(&[u8]) -> Answer + Sync,
) {
    let start = std::sync::Barrier::new(bodies.len());
    std::thread::scope(|s| {
        for body in bodies {
            let (start, send) = (&start, &send);
            s.spawn(move || {
                start.wait();
                send_until_taken(retried, ok, || send(body))
            });
        }
    });
}

/// Sends until the answer is `ok`, counting each 503 (with Retry-After: the ingest memory
/// budget is spent) in `retried` and waiting as a client would; 60 s at most.
fn send_until_taken(retried: &std::sync::atomic::AtomicU32, ok: u16, send: impl Fn() -> Answer) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = send();
        if a.status == ok {
            return;
        }
        assert_eq!(a.status, 503, "{}", a.text());
        assert!(a.header("retry-after").is_some());
        retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(Instant::now() < deadline, "never stored");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 33: Loki pushes share the same ingest memory budget: 8 concurrent protobuf pushes
/// of 100,000 entries each (every entry a decoded message of ~100 bytes from a few bytes on
/// the wire) under a 24 MiB budget are all stored, some after a 503, and the server's peak
/// stays within the bound the compact and JSON forms keep.
#[test]
fn concurrent_loki_pushes_share_the_ingest_memory_budget() {
    use logship_wire::loki::{EntryAdapter, PushRequest, StreamAdapter, Timestamp};
    use prost::Message;
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(dir.path(), BUDGET_24MIB);
    let bodies: Vec<Vec<u8>> = (0..8)
        .map(|f| {
            let req = PushRequest {
                streams: vec![StreamAdapter {
                    labels: format!("{{host=\"h\", filename=\"/p{f}\"}}"),
                    entries: (0..100_000i64)
                        .map(|i| EntryAdapter {
                            timestamp: Some(Timestamp {
                                seconds: 1_790_000_000 + i,
                                nanos: 0,
                            }),
                            line: format!("{f} {i}").into(),
                            structured_metadata: vec![],
                        })
                        .collect(),
                    hash: 0,
                }],
            };
            snap::raw::Encoder::new()
                .compress_vec(&req.encode_to_vec())
                .expect("snappy")
        })
        .collect();
    let quiet = agg.proc.rss();
    let retried = std::sync::atomic::AtomicU32::new(0);
    send_all_at_once(&bodies, &retried, 204, |body| {
        post(
            &agg.url("/loki/api/v1/push"),
            body,
            &[("Content-Type", "application/x-protobuf")],
        )
    });
    for f in 0..8 {
        let want: String = (0..100_000).map(|i| format!("{f} {i}\n")).collect();
        let got = agg.log("h", &format!("/p{f}"), "").expect("stored");
        assert!(got == want.as_bytes(), "stream {f} differs");
    }
    let peak = agg.proc.peak_rss();
    let retried = retried.into_inner();
    eprintln!(
        "8 × 100k-entry Loki pushes: quiet {} MiB, peak {} MiB, {retried} retries",
        quiet / MIB,
        peak / MIB,
    );
    assert!(retried > 0, "no push was refused: the budget never engaged");
    assert!(
        peak < quiet + 72 * MIB,
        "peak RSS {} MiB over {} MiB quiet",
        peak / MIB,
        quiet / MIB
    );
    assert_workers_stay_free(&agg);
}

/// 11.6: a request naming 120,000 hosts is refused at once (hosts per request are capped and
/// counted with a map), with the rate limit on, and `/ruok` keeps answering meanwhile.
#[test]
fn a_request_with_a_hundred_thousand_hosts_cannot_freeze_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(dir.path(), "[limits]\nper_host_lines_per_sec = 1000000\n");
    let body = zstd_json((0..120_000u64).map(|i| entry(&format!("h{i}"), "/f", 0, "x")));
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let (agg_ref, done_ref) = (&agg, &done);
        let watcher = s.spawn(move || {
            let mut worst = Duration::ZERO;
            while !done_ref.load(std::sync::atomic::Ordering::SeqCst) {
                let t = Instant::now();
                assert_eq!(get(&agg_ref.url("/ruok")).text(), "imok");
                worst = worst.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(20));
            }
            worst
        });
        for _ in 0..2 {
            let t = Instant::now();
            let a = post_zstd(&agg, &body, "application/json");
            assert_eq!(a.status, 413, "{}", a.text());
            assert!(a.text().contains("hosts"), "{}", a.text());
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "took {:?}",
                t.elapsed()
            );
        }
        // At the cap (100 hosts) the rate limiter handles it quickly too.
        let ok = zstd_json((0..100u64).map(|i| entry(&format!("h{i}"), "/f", 0, "x")));
        assert_eq!(post_zstd(&agg, &ok, "application/json").status, 200);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let worst = watcher.join().expect("watcher");
        assert!(worst < Duration::from_secs(1), "/ruok took {worst:?}");
    });
    assert_eq!(
        get(&agg.url("/store/hosts")).json()["hosts"]
            .as_array()
            .map(Vec::len),
        Some(100)
    );
    assert_workers_stay_free(&agg);
}

/// 11.8: listings are streamed and paged: four concurrent listings of 12,000 files with long
/// names (~26 MB each) keep the server's memory flat, and `limit`/`after` walk every file
/// exactly once.
#[test]
fn listings_of_many_files_stream_and_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let name = |i: usize| format!("/var/log/{}/{i:06}.log", "d".repeat(2_000));
    const FILES: usize = 12_000;
    for chunk in (0..FILES).collect::<Vec<_>>().chunks(500) {
        let body = zstd_json(chunk.iter().map(|&i| entry("h", &name(i), 0, "x")));
        let a = post_zstd(&agg, &body, "application/json");
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let quiet = agg.proc.rss();
    let peak = std::sync::atomic::AtomicU64::new(quiet);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let (agg_ref, peak_ref, done_ref) = (&agg, &peak, &done);
        s.spawn(move || {
            while !done_ref.load(std::sync::atomic::Ordering::SeqCst) {
                peak_ref.fetch_max(agg_ref.proc.rss(), std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let readers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(move || {
                    let a = get(&agg_ref.url("/store/files?host=h"));
                    assert_eq!(a.status, 200);
                    assert!(a.body.len() > FILES * 2_000, "{} bytes", a.body.len());
                    a.json()["files"].as_array().map_or(0, Vec::len)
                })
            })
            .collect();
        for r in readers {
            assert_eq!(r.join().expect("reader"), FILES);
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let peak = peak.into_inner();
    assert!(
        peak < quiet + 48 * MIB,
        "four listings of ~45 MB grew the server from {} to {} MiB",
        quiet / MIB,
        peak / MIB
    );
    // Paging: 7,000 at a time, every file once, in order.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let url = match &after {
            Some(c) => format!("/store/files?host=h&limit=7000&after={}", enc(c)),
            None => "/store/files?host=h&limit=7000".to_owned(),
        };
        let v = get(&agg.url(&url)).json();
        let page = v["files"].as_array().cloned().unwrap_or_default();
        assert!(page.len() <= 7_000);
        seen.extend(
            page.iter()
                .map(|f| f["file"].as_str().unwrap_or_default().to_owned()),
        );
        match v["next"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => break,
        }
    }
    let want: Vec<String> = (0..FILES).map(name).collect();
    assert_eq!(seen, want);
    let hosts = get(&agg.url("/store/hosts?limit=1")).json();
    assert_eq!(hosts, serde_json::json!({"hosts": ["h"]}));
    let bad = get(&agg.url("/store/files?after=%21%21"));
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(get(&agg.url("/store/files?limit=0")).status, 400);
    assert_workers_stay_free(&agg);
}

/// Connects from a given loopback source address (the whole 127/8 is local), so the server
/// sees distinct clients.
fn connect_from(source: &str, to: &str) -> TcpStream {
    let to: std::net::SocketAddr = to.parse().expect("address");
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let from: std::net::SocketAddr = format!("{source}:0").parse().expect("source");
    s.bind(&from.into()).expect("bind source");
    s.connect_timeout(&to.into(), Duration::from_secs(5))
        .expect("connect");
    s.into()
}

/// 11.7: three clients abuse the connection budget at once — slow bodies, stalled downloads,
/// connect-and-wait — while an agent ships: it delivers everything with at most two retries,
/// and the server's memory stays bounded.
#[test]
fn one_client_cannot_take_every_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(dir.path(), "max_connections = 32\nmax_connections_per_client = 8\nmax_downloads = 12\nheader_read_timeout = \"60s\"\n");
    // A large file for the stalled downloads.
    let big: Vec<Vec<u8>> = (0..8)
        .map(|i| format!("{i} {}", "z".repeat((1 << 20) - 16)).into_bytes())
        .collect();
    for (i, l) in big.iter().enumerate() {
        assert_eq!(
            post_compact(&agg, "h", "/big", "g", i as u64, &[l]).status,
            200
        );
    }
    let quiet = agg.proc.rss();
    let mut held = Vec::new();
    for _ in 0..30 {
        let mut s = connect_from("127.0.0.2", agg.addr());
        let _ = s.write_all(
            b"POST /store/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nx",
        );
        held.push(s);
        let mut s = connect_from("127.0.0.3", agg.addr());
        let _ = s.write_all(b"GET /store/log?host=h&file=/big HTTP/1.1\r\nHost: x\r\n\r\n");
        held.push(s);
        held.push(connect_from("127.0.0.4", agg.addr()));
    }
    // The slow bodies trickle a byte a second.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let (held, stop) = (&mut held, &stop);
        s.spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for c in held.iter_mut().step_by(3) {
                    let _ = c.write_all(b"y");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).expect("mkdir");
        let (_agent, metrics) =
            agent_with_metrics(dir.path(), &agg, &logs, "[limits]\nmax_in_flight = 4\n", "");
        let files: Vec<_> = (0..3).map(|i| logs.join(format!("f{i}.log"))).collect();
        // A steady writer: a batch a second per file, for 8 s.
        for round in 0..8 {
            for f in &files {
                append_lines(f, "steady", round * 100..round * 100 + 100);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let shipped = wait_until(Duration::from_secs(30), || {
            files.iter().all(|f| shipped_exactly(&agg, "h", f))
        });
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(
            shipped,
            "the agent did not deliver everything under the abuse"
        );
        let retries = agent_metric(&metrics, "agent_retries_total ");
        assert!((0.0..=2.0).contains(&retries), "{retries} retries");
        let rss = agg.proc.rss();
        assert!(
            rss < quiet + 64 * MIB,
            "server grew from {} to {} MiB",
            quiet / MIB,
            rss / MIB
        );
    });
    let m = get(&agg.url("/metrics")).text();
    assert!(
        metric(&m, "aggregator_connections_rejected_total ") >= 60.0,
        "{m}"
    );
    assert_workers_stay_free(&agg);
}

/// 11.7: a body trickling below `min_body_bytes_per_sec` is cut off with a 408 once the
/// grace period is over, long before `body_read_timeout`.
#[test]
fn a_trickling_body_is_cut_off_with_a_408() {
    use std::io::Read;
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(
        dir.path(),
        "body_grace = \"1s\"\nmin_body_bytes_per_sec = \"1KiB\"\nbody_read_timeout = \"60s\"\n",
    );
    let mut s = TcpStream::connect(agg.addr()).expect("connect");
    s.write_all(b"POST /store/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .expect("send");
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(20) {
        let _ = s.write_all(b"x");
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("min_body_bytes_per_sec"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_workers_stay_free(&agg);
}

/// 11.11: the agent's memory follows the files being read, not the files watched: 5,000
/// files of 20 KB, all shipped and then quiet, leave it under 64 MiB + 4 KiB per file.
#[test]
fn agent_memory_per_watched_file_stays_small() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    const FILES: usize = 5_000;
    let files: Vec<_> = (0..FILES)
        .map(|i| logs.join(format!("d{}/f{i}.log", i % 50)))
        .collect();
    let line = "x".repeat(190);
    for f in &files {
        std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
        let text: String = (0..100).map(|n| format!("{n:04} {line}\n")).collect();
        std::fs::write(f, text).expect("write");
    }
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let cfg = agent_config(
        dir.path(),
        &agg.url("/store/batch"),
        "h",
        &[&format!("{}/**/*.log", logs.display())],
        "",
        "",
    );
    let agent = Agent::start(&cfg);
    let shipped = || agg.files_with_lines("h", 100);
    assert!(
        wait_until(Duration::from_secs(180), || shipped() == FILES),
        "only {} of {FILES} files shipped",
        shipped()
    );
    let budget = 64 * MIB + 4 * 1024 * FILES as u64;
    // Settled: quiet files hold no buffers.
    let settled = wait_until(Duration::from_secs(20), || agent.proc.rss() < budget);
    eprintln!(
        "agent with {FILES} quiet files: RSS {} MiB (peak {} MiB), budget {} MiB",
        agent.proc.rss() / MIB,
        agent.proc.peak_rss() / MIB,
        budget / MIB
    );
    assert!(
        settled,
        "agent RSS {} MiB over {} MiB",
        agent.proc.rss() / MIB,
        budget / MIB
    );
}
