//! Issue 32: compressed blocks with the real aggregator — kill -9 while sealing and
//! compaction run, many rounds, and every acknowledged line (the last write of each) is
//! still there; then the store settles at a fraction of the content's size.

use std::collections::BTreeMap;
use std::time::Duration;

use logship_e2e::*;

const FILES: usize = 4;

/// An access-log line with the repetition of real ones and an id that differs per line.
fn line(file: usize, n: u64, version: u32) -> Vec<u8> {
    const PATHS: [&str; 5] = [
        "/api/v1/items",
        "/login",
        "/static/app.js",
        "/api/v1/cart",
        "/healthz",
    ];
    format!(
        "10.1.{}.{} - - [07/Dec/2026:10:{:02}:{:02} +0000] \"GET {}?id={:08x} HTTP/1.1\" {} {} \"-\" \"Mozilla/5.0 (X11; Linux x86_64) v{version} f{file}\"",
        n % 13,
        n % 251,
        (n / 60) % 60,
        n % 60,
        PATHS[(n % 5) as usize],
        n.wrapping_mul(0x9E37_79B9) as u32,
        [200, 200, 200, 304, 404][(n % 5) as usize],
        200 + n % 9000
    )
    .into_bytes()
}

fn segments_bytes(data: &std::path::Path) -> u64 {
    std::fs::read_dir(data.join("segments"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn rendered(lines: &BTreeMap<u64, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines.values() {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

/// Posts lines `from..from + n` of `file` in `version`, and records them once acknowledged.
fn write(
    agg: &Aggregator,
    model: &mut [BTreeMap<u64, Vec<u8>>],
    file: usize,
    from: u64,
    n: u64,
    version: u32,
) {
    let lines: Vec<Vec<u8>> = (from..from + n).map(|i| line(file, i, version)).collect();
    let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let r = post_compact(agg, "h", &format!("/f{file}"), "g", from, &refs);
    assert_eq!(r.status, 200, "{}", r.text());
    for (i, l) in (from..).zip(lines) {
        model[file].insert(i, l);
    }
}

#[test]
fn kill_9_during_sealing_and_compaction_loses_no_acknowledged_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Sealing every 50 ms (a quarter of seal_after) and a sweep every 200 ms: a kill
    // lands in the middle of one or the other most rounds.
    let toml = "[store]\nseal_after = \"200ms\"\nsweep_interval = \"200ms\"\n";
    let mut model: Vec<BTreeMap<u64, Vec<u8>>> = vec![BTreeMap::new(); FILES];
    let mut rng = fastrand::Rng::with_seed(32);
    let mut sealed_rounds = 0;
    for round in 0..8u32 {
        let mut agg = Aggregator::with_config(dir.path(), toml);
        // Everything acknowledged before the last kill is there, byte for byte.
        for (f, lines) in model.iter().enumerate() {
            if !lines.is_empty() {
                let got = agg.log("h", &format!("/f{f}"), "").expect("download");
                assert!(
                    got == rendered(lines),
                    "round {round}: /f{f} differs from what was acknowledged ({} bytes, expected {})",
                    got.len(),
                    rendered(lines).len()
                );
            }
        }
        for f in 0..FILES {
            let end = model[f].keys().next_back().map_or(0, |l| l + 1);
            for chunk in 0..6 {
                write(&agg, &mut model, f, end + chunk * 500, 500, round);
            }
            // Rewrites of lines written (and likely sealed) in earlier rounds: the last
            // write wins, also over a block.
            if end > 0 {
                let from = rng.u64(0..end);
                write(&agg, &mut model, f, from, rng.u64(1..300), round + 100);
            }
        }
        let sealed = |agg: &Aggregator| {
            metric(
                &get(&agg.url("/metrics")).text(),
                "aggregator_store_sealed_blocks_total",
            )
        };
        if wait_until(Duration::from_secs(20), || sealed(&agg) > 0.0) {
            sealed_rounds += 1;
        }
        // A few more acknowledged writes, then the kill, at a different moment each round.
        for _ in 0..rng.usize(0..4) {
            let f = rng.usize(0..FILES);
            let end = model[f].keys().next_back().map_or(0, |l| l + 1);
            write(&agg, &mut model, f, end, rng.u64(1..200), round);
        }
        agg.proc.kill9();
    }
    assert!(
        sealed_rounds >= 6,
        "sealing ran in only {sealed_rounds} of 8 rounds"
    );
    let agg = Aggregator::with_config(dir.path(), toml);
    let content: u64 = model
        .iter()
        .map(|m| m.values().map(|l| l.len() as u64 + 1).sum::<u64>())
        .sum();
    // Quiet now: everything is sealed, the raw copies and the blocks that lost their
    // buckets are compacted away, and what stays is a fraction of the content.
    let data = dir.path().join("data");
    let settled = wait_until(Duration::from_secs(60), || {
        let m = get(&agg.url("/metrics")).text();
        metric(&m, "aggregator_store_seal_waiting_bytes") == 0.0
            && segments_bytes(&data) * 3 < content
    });
    assert!(
        settled,
        "segments hold {} bytes for {content} bytes of content",
        segments_bytes(&data)
    );
    for (f, lines) in model.iter().enumerate() {
        let got = agg.log("h", &format!("/f{f}"), "").expect("download");
        assert!(
            got == rendered(lines),
            "/f{f} differs after sealing settled"
        );
    }
    // A search reads the blocks too.
    let id = format!("id={:08x}", 777u64.wrapping_mul(0x9E37_79B9) as u32);
    let r = get(&agg.url(&format!("/store/search?host=h&q={}", enc(&id))));
    assert_eq!(r.status, 200, "{}", r.text());
    let found = r.text().lines().filter(|l| l.contains(&id)).count();
    assert!(found >= FILES, "{found} matches of {id}: {}", r.text());
}
