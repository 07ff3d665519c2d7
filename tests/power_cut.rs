//! What a 2xx promises beyond kill -9: that the lines survive the machine losing power, and
//! that nothing the store does later (compaction) puts them at risk again.
//!
//! A power cut keeps only what was fsynced, so these tests run the real aggregator under
//! `strace` and check the order of its writes and fsyncs: a file that names data (sled's
//! `index/db`) must never reach the disk, nor an ack the client, before the data it names
//! (the segment files) was fsynced.

use std::collections::HashMap;
use std::time::Duration;

use logship_e2e::*;

/// sled's flush only `sync_file_range`s its log, which neither commits the file's size nor
/// flushes the disk's cache: without the commit's explicit sync of `index/db` an
/// acknowledged batch could come back after a power cut as data no index entry names, and
/// compaction would reclaim it as garbage. For every acknowledgement the test checks that
/// each store file written before it — the segment files holding the lines and `index/db`
/// naming them — was fsynced after its last write and before the acknowledgement.
#[test]
fn every_acknowledgement_follows_an_fsync_of_the_data_and_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let trace = dir.path().join("trace");
    let mut strace = attach_strace(&agg, &trace);
    let posts = 12u64;
    for batch in 0..posts {
        let lines: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("batch {batch} line {i}").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let file = format!("/f{}", batch % 3);
        let r = post_compact(&agg, "h", &file, "g", (batch / 3) * 40, &refs);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let text = detach(&mut strace, &trace);
    let calls = parse_calls(&text);
    let acks = |c: &Call| {
        matches!(c.name.as_str(), "write" | "writev")
            && (c.path.starts_with("socket:") || c.path.starts_with("TCP"))
            && c.text.contains("HTTP/1.1 200")
    };
    let store_file = |p: &str| p.ends_with(".seg") || p.ends_with("/index/db");
    let report = unsynced_before(&calls, acks, store_file);
    assert_eq!(
        report.events, posts,
        "every acknowledgement should be in the trace\n{text}"
    );
    assert!(
        writes_to(&calls, |p| p.ends_with("/index/db")) > 0
            && writes_to(&calls, |p| p.ends_with(".seg")) > 0,
        "the trace should show writes to index/db and to the segments\n{text}"
    );
    assert!(
        report.unsynced.is_empty(),
        "acknowledged before their store files were fsynced: {:#?}",
        report.unsynced
    );
}

/// Compaction appends copies of a segment's live buckets to the active segment and moves
/// their index entries to the copies. sled writes its log out whenever a 512 KiB buffer
/// fills, not only when the store flushes it, so an index entry naming a copy can reach the
/// disk while the copy is still only in the page cache: after a power cut the entry would
/// name bytes that are not there, and the old segment, no longer named, would be deleted on
/// the next sweep — acknowledged lines lost by our own compaction.
///
/// The store is filled by one aggregator (20,000 one-line buckets, each written three times,
/// so two thirds of the segment is garbage), then a second one, traced from before its first
/// sweep and sent nothing, compacts it: moving 20,000 entries writes megabytes of sled log.
/// Every write to `index/db` must come after an fsync of every segment write before it. The
/// live buckets (~600 KB) are one append of compaction's (which copies ~1 MiB at a time), so
/// sled writing out earlier entries cannot fall between a later copy and its fsync.
#[test]
fn compaction_fsyncs_its_copies_before_the_index_names_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = |name: &str, interval: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("[store]\nsweep_interval = \"{interval}\"\n"))
            .expect("write config");
        path.to_string_lossy().into_owned()
    };
    let buckets = 20_000u64;
    // One line per bucket: line numbers 128 apart.
    let number = |i: u64| i * 128;
    let content = |i: u64| format!("compacted line {i}");
    {
        let writer = Aggregator::start(&data, &["--config", &config("write.toml", "1h")]);
        for _round in 0..3 {
            // 2,000 buckets a request: `limits.max_buckets_per_request` is 2,048.
            for part in 0..buckets / 2_000 {
                let batch: Vec<serde_json::Value> = (part * 2_000..(part + 1) * 2_000)
                    .map(|i| {
                        serde_json::json!({"uuid": format!("u{i}"), "host": "h", "file": "/c",
                            "line-num": number(i), "content": content(i)})
                    })
                    .collect();
                let body = serde_json::json!({"size": batch.len(), "batch": batch});
                let r = post(
                    &writer.url("/store/batch"),
                    body.to_string().as_bytes(),
                    &[("Content-Type", "application/json")],
                );
                assert_eq!(r.status, 200, "{}", r.text());
            }
        }
    }
    let want: Vec<u8> = (0..buckets)
        .flat_map(|i| format!("{}\n", content(i)).into_bytes())
        .collect();

    let agg = Aggregator::start(&data, &["--config", &config("sweep.toml", "5s")]);
    let trace = dir.path().join("trace");
    let mut strace = attach_strace(&agg, &trace);
    let sweeps = || {
        metric(
            &get(&agg.url("/metrics")).text(),
            "aggregator_sweeps_total ",
        )
    };
    assert_eq!(
        sweeps(),
        0.0,
        "the first sweep ran before strace attached (over 5 s): the test cannot see it"
    );
    let reclaimed = || {
        metric(
            &get(&agg.url("/metrics")).text(),
            "aggregator_compaction_reclaimed_bytes_total ",
        ) > 0.0
    };
    assert!(
        wait_until(Duration::from_secs(60), reclaimed),
        "no segment was compacted within 60 s"
    );
    let text = detach(&mut strace, &trace);
    assert_eq!(agg.log("h", "/c", "").expect("stored"), want);

    let calls = parse_calls(&text);
    let index_writes = |c: &Call| is_write(c) && c.path.ends_with("/index/db");
    let report = unsynced_before(&calls, index_writes, |p| p.ends_with(".seg"));
    let copies = writes_to(&calls, |p| p.ends_with(".seg"));
    assert!(
        copies > 0 && report.events > 0,
        "the trace should show compaction's copies ({copies} segment writes) and index \
         writes ({})\n{text}",
        report.events
    );
    assert!(
        report.unsynced.is_empty(),
        "index/db written before the segment data it may name was fsynced: {:#?}",
        report.unsynced
    );
}

/// Starts `strace -f -y` on the running aggregator, tracing writes and syncs into `trace`,
/// and waits (10 s at most) until every thread is traced.
fn attach_strace(agg: &Aggregator, trace: &std::path::Path) -> Proc {
    let pid = agg.proc.child.id();
    let strace = Proc {
        child: std::process::Command::new("strace")
            .args(["-f", "-y", "-qq", "-s", "24", "-o"])
            .arg(trace)
            .args([
                "-e",
                "trace=pwrite64,pwritev,write,writev,fsync,fdatasync,sync_file_range",
                "-p",
                &pid.to_string(),
            ])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("strace is missing: apt-get install strace (scripts/test does)"),
        name: "strace",
    };
    let traced = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("status")).is_ok_and(|s| {
                s.lines().any(|l| {
                    l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0")
                })
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), traced),
        "strace did not attach to the aggregator within 10 s (is ptrace allowed here?)"
    );
    strace
}

/// Detaches `strace` and returns what it wrote.
fn detach(strace: &mut Proc, trace: &std::path::Path) -> String {
    strace.signal("INT");
    assert!(
        strace.wait_exit(Duration::from_secs(10)).is_some(),
        "strace did not detach"
    );
    std::fs::read_to_string(trace).expect("read the trace")
}

/// One system call from `strace -f -y` output.
#[derive(Debug)]
struct Call {
    /// Trace line where it began…
    start: usize,
    /// …and where it returned (the same line unless another thread's call came between).
    end: usize,
    name: String,
    /// The first argument's path (`-y` prints it as `fd<path>`).
    path: String,
    /// Its arguments and result.
    text: String,
}

fn is_write(c: &Call) -> bool {
    matches!(c.name.as_str(), "pwrite64" | "pwritev" | "write" | "writev")
}

fn writes_to(calls: &[Call], file: impl Fn(&str) -> bool) -> usize {
    calls
        .iter()
        .filter(|c| is_write(c) && file(&c.path))
        .count()
}

/// Reads the calls, joining each `<unfinished ...>` with its `<... resumed>` line.
fn parse_calls(trace: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    // A call another thread's line interrupted: pid → its start line, name and text.
    let mut unfinished: HashMap<&str, (usize, String, String)> = HashMap::new();
    for (i, line) in trace.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let rest = rest.trim_start();
        let (start, name, text) = if let Some(resumed) = rest.strip_prefix("<... ") {
            match unfinished.remove(pid) {
                Some((start, name, begun)) => (start, name, format!("{begun}{resumed}")),
                None => continue,
            }
        } else {
            let Some((name, args)) = rest.split_once('(') else {
                continue;
            };
            if rest.ends_with("<unfinished ...>") {
                unfinished.insert(pid, (i, name.to_owned(), args.to_owned()));
                continue;
            }
            (i, name.to_owned(), args.to_owned())
        };
        let path = text
            .split_once('<')
            .and_then(|(_, p)| p.split_once('>'))
            .map_or("", |(p, _)| p)
            .to_owned();
        calls.push(Call {
            start,
            end: i,
            name,
            path,
            text,
        });
    }
    calls
}

#[derive(Debug, Default)]
struct SyncReport {
    /// Calls that `is_event` matched.
    events: u64,
    /// (trace line where such a call began, a file written before it and not fsynced
    /// between that write's return and the call's start).
    unsynced: Vec<(usize, String)>,
}

/// For every call `is_event` matches: each file `watched` matches that was written before
/// the call began must have been fsynced — a successful `fsync`/`fdatasync` that began after
/// its last such write returned and returned before the call began.
fn unsynced_before(
    calls: &[Call],
    is_event: impl Fn(&Call) -> bool,
    watched: impl Fn(&str) -> bool,
) -> SyncReport {
    let mut report = SyncReport::default();
    for event in calls.iter().filter(|c| is_event(c)) {
        report.events += 1;
        let mut last_write: HashMap<&str, usize> = HashMap::new();
        for w in calls
            .iter()
            .filter(|c| c.start < event.start && is_write(c) && watched(&c.path))
        {
            let at = last_write.entry(&w.path).or_default();
            *at = (*at).max(w.end);
        }
        for (file, written) in last_write {
            let synced = calls.iter().any(|s| {
                matches!(s.name.as_str(), "fsync" | "fdatasync")
                    && s.path == file
                    && s.text.trim_end().ends_with("= 0")
                    && s.start > written
                    && s.end < event.start
            });
            if !synced {
                report.unsynced.push((event.start + 1, file.to_owned()));
            }
        }
    }
    report
}
