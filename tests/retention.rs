//! Retention: generations not written for `retention` are dropped by the periodic sweep, and
//! compaction gives their disk space back, while files still being written stay whole.

use std::path::Path;
use std::time::Duration;

use logship_e2e::*;

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn expired_files_are_dropped_and_their_disk_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("agg.toml"),
        "[store]\nretention = \"2s\"\nsweep_interval = \"200ms\"\n",
    )
    .expect("write");
    let data = dir.path().join("data");
    let agg = Aggregator::start(
        &data,
        &["--config", &dir.path().join("agg.toml").to_string_lossy()],
    );
    // A file written once, about 2 MiB.
    let old: Vec<Vec<u8>> = (0..20_000)
        .map(|i| format!("old line {i} {}", "o".repeat(90)).into_bytes())
        .collect();
    for (i, chunk) in old.chunks(1_000).enumerate() {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        let a = post_compact(&agg, "h", "/old", "g", (i * 1_000) as u64, &refs);
        assert_eq!(a.status, 200, "{}", a.text());
    }
    assert_eq!(
        agg.log("h", "/old", "").expect("stored").len(),
        old.iter().map(|l| l.len() + 1).sum::<usize>()
    );
    let segments = data.join("segments");
    let before = dir_bytes(&segments);
    assert!(before > 2_000_000, "{before} bytes of segments");

    // Meanwhile another file is written all the time: it must stay, whole.
    let mut fresh: Vec<Vec<u8>> = Vec::new();
    let mut write_fresh = || {
        let line = format!("fresh line {}", fresh.len()).into_bytes();
        let a = post_compact(&agg, "h", "/fresh", "g", fresh.len() as u64, &[&line]);
        assert_eq!(a.status, 200, "{}", a.text());
        fresh.push(line);
    };
    let old_listed = |agg: &Aggregator| {
        get(&agg.url("/store/files?host=h")).json()["files"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["file"] == "/old")
    };
    assert!(
        wait_until(Duration::from_secs(30), || {
            write_fresh();
            !old_listed(&agg)
        }),
        "the expired file is still listed"
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            write_fresh();
            dir_bytes(&segments) * 4 < before
        }),
        "segments still take {} bytes (were {before})",
        dir_bytes(&segments)
    );
    assert_eq!(agg.log("h", "/old", ""), Err(404));
    let want: Vec<u8> = fresh
        .iter()
        .flat_map(|l| [l.as_slice(), b"\n"].concat())
        .collect();
    assert_eq!(agg.log("h", "/fresh", "").expect("fresh file"), want);
    assert_eq!(get(&agg.url("/store/hosts")).json()["hosts"][0], "h");
    let m = get(&agg.url("/metrics")).text();
    assert!(
        metric(&m, "aggregator_retention_generations_dropped_total ") >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "aggregator_compaction_segments_total ") >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "aggregator_compaction_reclaimed_bytes_total ") > 1e6,
        "{m}"
    );
}
