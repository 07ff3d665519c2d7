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
    let data = dir.path().join("data");
    let agg = Aggregator::with_config(
        dir.path(),
        "[store]\nretention = \"2s\"\nsweep_interval = \"200ms\"\n",
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

/// Issue 11.1: a drop must be atomic with respect to writes. Many quiet files are touched at
/// gaps around `retention`, so writes keep landing just as the sweep drops their generation.
/// Every line that got a 2xx must be downloadable afterwards unless its generation was idle
/// for longer than `retention` after that ack.
#[test]
fn a_write_racing_the_retention_drop_is_never_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(
        dir.path(),
        "[store]\nretention = \"3s\"\nsweep_interval = \"100ms\"\n",
    );
    let retention = Duration::from_secs(3);
    // A large generation kept alive makes each sweep's index scan (between listing the
    // expired generations and dropping them) take a while, as on a real store.
    let big: Vec<Vec<u8>> = (0..2_000)
        .map(|i| format!("big {i}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = big.iter().map(Vec::as_slice).collect();
    for b in 0..150u64 {
        let a = post_compact(&agg, "h", "/big", "g", b * 2_000, &refs);
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let run_for = Duration::from_secs(
        std::env::var("LOGSHIP_RETENTION_RACE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    const THREADS: usize = 4;
    const FILES_PER_THREAD: usize = 40;
    // (send, ack, line number) of every acknowledged line, per file.
    type Acks = Vec<(std::time::Instant, std::time::Instant, u64)>;
    let started = std::time::Instant::now();
    let results: Vec<Vec<Acks>> = std::thread::scope(|s| {
        let agg_ref = &agg;
        s.spawn(move || {
            let mut n = 300_000u64;
            while started.elapsed() < run_for {
                let a = post_compact(agg_ref, "h", "/big", "g", n, &[b"keep alive"]);
                assert_eq!(a.status, 200, "{}", a.text());
                n += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let agg = &agg;
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(t as u64 + 11);
                    let mut acks: Vec<Acks> = vec![Vec::new(); FILES_PER_THREAD];
                    // Each file is due again after a gap drawn around the retention.
                    let mut due: Vec<std::time::Instant> = (0..FILES_PER_THREAD)
                        .map(|_| started + Duration::from_millis(rng.u64(0..3_000)))
                        .collect();
                    while started.elapsed() < run_for {
                        let (f, &when) = due
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, d)| **d)
                            .expect("files");
                        // Pacing a load generator, not synchronising: sleep until due.
                        std::thread::sleep(
                            when.saturating_duration_since(std::time::Instant::now()),
                        );
                        let n = acks[f].len() as u64;
                        let file = format!("/race/{t}-{f}");
                        let line = format!("{file} line {n}");
                        let send = std::time::Instant::now();
                        let a = post_compact(agg, "h", &file, "g", n, &[line.as_bytes()]);
                        assert_eq!(a.status, 200, "{}", a.text());
                        acks[f].push((send, std::time::Instant::now(), n));
                        due[f] = std::time::Instant::now()
                            + Duration::from_millis(rng.u64(2_950..3_200));
                    }
                    acks
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer"))
            .collect()
    });
    let mut checked = 0;
    for (t, files) in results.iter().enumerate() {
        for (f, acks) in files.iter().enumerate() {
            let file = format!("/race/{t}-{f}");
            let now = std::time::Instant::now();
            let body = agg.log("h", &file, "").unwrap_or_default();
            let text = String::from_utf8(body).expect("utf8");
            let got: Vec<&str> = text.lines().collect();
            // Lines acked at or before the last gap that could have let the generation
            // expire may be gone; every later one must be there.
            let mut must_from = 0;
            for (i, w) in acks.windows(2).enumerate() {
                if w[1].1.duration_since(w[0].0) >= retention {
                    must_from = i + 1;
                }
            }
            if acks
                .last()
                .is_some_and(|l| now.duration_since(l.0) >= retention)
            {
                must_from = acks.len();
            }
            for &(_, _, n) in &acks[must_from..] {
                let want = format!("{file} line {n}");
                assert!(
                    got.contains(&want.as_str()),
                    "acknowledged line {want:?} is gone; stored: {got:?}"
                );
                checked += 1;
            }
            let mut unique = got.clone();
            unique.dedup();
            assert_eq!(unique.len(), got.len(), "a line twice in {file}");
        }
    }
    assert!(checked > 100, "only {checked} lines had to survive");
    let m = get(&agg.url("/metrics")).text();
    assert!(
        metric(&m, "aggregator_retention_generations_dropped_total ") >= 50.0,
        "the test must make the sweep drop often: {m}"
    );
}

/// Where Debian's `faketime` package puts libfaketime.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Issue 11.2: with the wall clock stepped 40 days ahead while the aggregator runs
/// (libfaketime, monotonic clock untouched as on a real NTP step), the sweep must not drop
/// anything written within `retention` of real (monotonic) time.
#[test]
fn a_wall_clock_jump_does_not_wipe_the_store() {
    if !Path::new(LIBFAKETIME).exists() {
        panic!("{LIBFAKETIME} is missing: apt-get install faketime (scripts/test does)");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("agg.toml");
    std::fs::write(
        &cfg,
        "[store]\nretention = \"1h\"\nsweep_interval = \"100ms\"\n",
    )
    .expect("write");
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").expect("write");
    let agg = Aggregator::start_with_env(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--config", &cfg.to_string_lossy()],
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", &offset.to_string_lossy()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let lines: Vec<Vec<u8>> = (0..500).map(|i| format!("line {i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    for f in 0..20 {
        let a = post_compact(&agg, "h", &format!("/f{f}"), "g", 0, &refs);
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let sweeps = |agg: &Aggregator| {
        metric(
            &get(&agg.url("/metrics")).text(),
            "aggregator_sweeps_total ",
        )
    };
    let before = sweeps(&agg);
    assert!(
        wait_until(Duration::from_secs(10), || sweeps(&agg) >= before + 2.0),
        "no sweep ran"
    );
    // The wall clock steps 40 days ahead.
    std::fs::write(&offset, "+40d\n").expect("write");
    let jumped = sweeps(&agg);
    assert!(
        wait_until(Duration::from_secs(10), || sweeps(&agg) >= jumped + 5.0),
        "no sweep ran after the jump"
    );
    let m = get(&agg.url("/metrics")).text();
    assert!(
        metric(&m, "aggregator_retention_clock_jumps_total ") >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "aggregator_retention_clock_behind_seconds ") > 39.0 * 86_400.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "aggregator_retention_generations_dropped_total "),
        0.0,
        "{m}"
    );
    let want: Vec<u8> = lines
        .iter()
        .flat_map(|l| [l.as_slice(), b"\n"].concat())
        .collect();
    for f in 0..20 {
        assert_eq!(agg.log("h", &format!("/f{f}"), "").expect("kept"), want);
    }
}

/// Issue 32.6: a file written without pause and never rotated is trimmed too: the store
/// holds about what the retention window writes, line numbers stay, and every line written
/// within the window is still there (the soak's short form, inside the suite).
#[test]
fn a_live_file_written_without_pause_is_trimmed_to_the_retention_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(
        dir.path(),
        "[store]\nretention = \"2s\"\nsweep_interval = \"200ms\"\nseal_after = \"500ms\"\n",
    );
    let line = |n: u64| format!("line {n} {}", "x".repeat(100)).into_bytes();
    // (first line of the batch, when it was sent) for every batch: the aggregator received
    // it after that.
    let mut sent: Vec<(u64, std::time::Instant)> = Vec::new();
    let started = std::time::Instant::now();
    let mut next = 0u64;
    while started.elapsed() < Duration::from_secs(10) {
        let lines: Vec<Vec<u8>> = (next..next + 200).map(line).collect();
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        sent.push((next, std::time::Instant::now()));
        let a = post_compact(&agg, "h", "/live.log", "g", next, &refs);
        assert_eq!(a.status, 200, "{}", a.text());
        next += 200;
        std::thread::sleep(Duration::from_millis(20)); // pacing the writer, not a wait
    }
    let first_line = || -> u64 {
        let v = get(&agg.url("/store/files?host=h")).json();
        v["files"][0]["generations"][0]["first_line"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(10), || first_line() > 0),
        "nothing trimmed: {}",
        get(&agg.url("/store/files?host=h")).text()
    );
    // What is kept downloads exactly, numbers unchanged, from the first kept line on (read
    // in one download: the sweep goes on trimming meanwhile).
    let nd = agg
        .log("h", "/live.log", "&format=ndjson")
        .expect("download");
    let checked = std::time::Instant::now();
    let kept: Vec<(u64, String)> = String::from_utf8_lossy(&nd)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            (
                v["line"].as_u64().expect("line"),
                v["content"].as_str().expect("content").to_owned(),
            )
        })
        .collect();
    let first = kept.first().map_or(next, |(n, _)| *n);
    assert!(first > 0, "nothing trimmed");
    for (i, (n, content)) in kept.iter().enumerate() {
        assert_eq!(*n, first + i as u64, "a kept line is missing");
        assert!(content.as_bytes() == line(*n), "line {n} differs");
    }
    assert_eq!(
        first + kept.len() as u64,
        next,
        "the newest lines are missing"
    );
    // Nothing written within the retention window was trimmed: the batch holding the last
    // trimmed line was sent at least the retention before the download ended.
    let (_, last_trimmed_sent) = sent
        .iter()
        .rev()
        .find(|(start, _)| *start < first)
        .copied()
        .expect("a trimmed batch");
    assert!(
        checked.duration_since(last_trimmed_sent) >= Duration::from_secs(2),
        "line {} was trimmed {:?} after it was sent",
        first - 1,
        checked.duration_since(last_trimmed_sent)
    );
    // The store holds about the window, not everything written, and its listing says so.
    let v = get(&agg.url("/store/files?host=h")).json();
    let g = &v["files"][0]["generations"][0];
    let (listed, listed_first) = (
        g["lines"].as_u64().unwrap_or(0),
        g["first_line"].as_u64().unwrap_or(0),
    );
    assert_eq!(listed, next - listed_first, "{g}");
    assert!(listed * 2 < next, "{listed} of {next} lines kept");
}
