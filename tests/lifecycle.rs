//! Issue 4: rotation, truncation, generations, discovery — with the real binaries and the
//! real `logrotate`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logship_e2e::*;

/// Writes unique lines to `path` in small bursts, reopening it for every burst (as an
/// application that reopens its log after rotation), and keeps every byte it wrote.
struct SteadyWriter {
    stop: Arc<AtomicBool>,
    written: Arc<Mutex<Vec<u8>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl SteadyWriter {
    fn start(path: PathBuf, per_burst: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(Mutex::new(Vec::new()));
        let (s, w) = (stop.clone(), written.clone());
        let handle = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let mut buf = Vec::new();
                for _ in 0..per_burst {
                    writeln!(buf, "steady line {n} {}", "z".repeat((n % 50) as usize))
                        .expect("fmt");
                    n += 1;
                }
                // Like an application whose log is set up: append, never create. Between
                // logrotate's rename and its create the path is missing; the burst waits.
                let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&path) else {
                    n -= per_burst as u64;
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                f.write_all(&buf).expect("write");
                w.lock().expect("lock").extend_from_slice(&buf);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        SteadyWriter {
            stop,
            written,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("writer thread");
        }
        let w = self.written.lock().expect("lock");
        w.clone()
    }
}

impl Drop for SteadyWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Every generation of `file`, oldest first, downloaded and concatenated.
fn all_generations(agg: &Aggregator, host: &str, file: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (g, _) in generations(agg, host, file) {
        let part = agg
            .log(host, file, &format!("&generation={}", enc(&g)))
            .expect("generation downloads");
        out.extend_from_slice(&part);
    }
    out
}

/// Waits until `log` (host `h`) is stored as two generations: the first byte-identical to
/// `old`, the second to the file as it is now.
fn assert_old_and_new_generations(agg: &Aggregator, log: &Path, old: &[u8], what: &str) {
    let name = log.to_string_lossy();
    let stored = || {
        let gens = generations(agg, "h", &name);
        gens.len() == 2
            && agg
                .log("h", &name, &format!("&generation={}", enc(&gens[0].0)))
                .is_ok_and(|b| b == old)
            && shipped_exactly(agg, "h", log)
    };
    assert!(
        wait_until(Duration::from_secs(15), stored),
        "{what}: {:?}",
        generations(agg, "h", &name)
    );
}

/// Runs an agent until `log` is shipped, then stops it (SIGTERM).
fn ship_then_stop(agg: &Aggregator, cfg: &Path, log: &Path) {
    let mut agent = Agent::start(cfg);
    assert!(wait_until(Duration::from_secs(10), || shipped_exactly(
        agg, "h", log
    )));
    agent.proc.signal("TERM");
    agent
        .proc
        .wait_exit(Duration::from_secs(20))
        .expect("agent stops");
}

/// While the agent does not look: `unread` more lines of the first life, a copytruncate to
/// `LOG.1`, then `second` lines of the new life. Returns the copy's bytes.
fn copytruncate_unseen(
    log: &Path,
    unread: std::ops::Range<usize>,
    second: std::ops::Range<usize>,
) -> Vec<u8> {
    append_lines(log, "first life, unread", unread);
    let copy = log.with_extension("log.1");
    std::fs::copy(log, &copy).expect("copy");
    std::fs::write(log, b"").expect("truncate");
    append_lines(log, "second life", second);
    std::fs::read(&copy).expect("read copy")
}

fn logrotate(dir: &Path, log: &Path, mode: &str) {
    let conf = dir.join("logrotate.conf");
    std::fs::write(
        &conf,
        format!(
            "{} {{\n  {mode}\n  rotate 10\n  missingok\n  nocompress\n}}\n",
            log.display()
        ),
    )
    .expect("write logrotate.conf");
    let out = Command::new("logrotate")
        .args(["-f", "-s"])
        .arg(dir.join("logrotate.state"))
        .arg(&conf)
        .output()
        .expect("run logrotate (apt-get install logrotate)");
    assert!(
        out.status.success(),
        "logrotate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rotation_under_steady_writes(mode: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let log = logs.join("app.log");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let cfg = agent_config(
        dir.path(),
        &agg.url("/store/batch"),
        "h",
        &[&format!("{}/*.log", logs.display())],
        "",
        "rotate_wait = \"500ms\"",
    );
    std::fs::write(&log, b"").expect("create the log");
    let writer = SteadyWriter::start(log.clone(), 20);
    let _agent = Agent::start(&cfg);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        logrotate(dir.path(), &log, mode);
    }
    std::thread::sleep(Duration::from_millis(400));
    let written = writer.finish();
    let name = log.to_string_lossy().into_owned();
    // What is on disk now (the live file and its rotated copies) must all be stored, in
    // the order written, each line once. copytruncate itself loses lines written between
    // its copy and its truncation; the agent may still have caught those, so the store may
    // hold more than the disk, never less and never a line twice.
    let on_disk: Vec<u8> = std::fs::read_dir(&logs)
        .expect("list logs")
        .filter_map(Result::ok)
        .flat_map(|e| std::fs::read(e.path()).unwrap_or_default())
        .collect();
    let check = || -> Result<(), String> {
        let stored = all_generations(&agg, "h", &name);
        let index: std::collections::HashMap<&[u8], usize> = written
            .split(|&b| b == b'\n')
            .enumerate()
            .map(|(i, l)| (l, i))
            .collect();
        let mut last = None;
        let mut seen = std::collections::HashSet::new();
        for l in stored.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let i = *index.get(l).ok_or_else(|| {
                format!(
                    "stored a line never written: {:?}",
                    String::from_utf8_lossy(l)
                )
            })?;
            if !seen.insert(i) || last.is_some_and(|p| p >= i) {
                return Err(format!("line {i} stored twice or out of order"));
            }
            last = Some(i);
        }
        for l in on_disk.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if !index.get(l).is_some_and(|i| seen.contains(i)) {
                return Err(format!(
                    "line on disk not stored: {:?}",
                    String::from_utf8_lossy(l)
                ));
            }
        }
        Ok(())
    };
    let ok = wait_until(Duration::from_secs(30), || check().is_ok());
    assert!(ok, "{mode}: {:?}", check());
    let gens = generations(&agg, "h", &name);
    assert_eq!(
        gens.len(),
        4,
        "{mode}: one generation per lifetime, got {gens:?}"
    );
    // The newest generation is the file as it is now.
    assert_eq!(
        agg.log("h", &name, "").expect("newest"),
        std::fs::read(&log).expect("read")
    );
}

#[test]
fn logrotate_create_during_steady_writes_keeps_every_generation() {
    rotation_under_steady_writes("create");
}

#[test]
fn logrotate_copytruncate_during_steady_writes_keeps_every_generation() {
    rotation_under_steady_writes("copytruncate");
}

#[test]
fn partial_lines_are_held_then_completed_under_the_same_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agg, logs, cfg) = start_pair(dir.path(), "", "partial_line_timeout = \"300ms\"");
    let log = logs.join("p.log");
    std::fs::write(&log, b"one\r\n\0two\xff\n\nhalf").expect("write");
    let _agent = Agent::start(&cfg);
    let name = log.to_string_lossy().into_owned();
    assert!(
        wait_until(Duration::from_secs(10), || agg
            .log("h", &name, "")
            .is_ok_and(|b| b == b"one\r\n\0two\xff\n\nhalf")),
        "the partial last line is shipped after partial_line_timeout, without a newline"
    );
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("open");
    f.write_all(b" done\nnext\n").expect("append");
    assert!(wait_until(Duration::from_secs(10), || shipped_exactly(
        &agg, "h", &log
    )));
    assert_eq!(
        generations(&agg, "h", &name)[0].1,
        5,
        "the completed line kept its number"
    );
}

#[test]
fn long_lines_are_truncated_not_split() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agg, logs, cfg) = start_pair(dir.path(), "", "max_line_bytes = \"100\"");
    let log = logs.join("long.log");
    let long = "L".repeat(5000);
    std::fs::write(&log, format!("short\n{long}\nafter\n")).expect("write");
    let _agent = Agent::start(&cfg);
    let name = log.to_string_lossy().into_owned();
    let want = format!("short\n{}\nafter\n", &long[..100]);
    assert!(wait_until(Duration::from_secs(10), || agg
        .log("h", &name, "")
        .is_ok_and(|b| b == want.as_bytes())));
    assert_eq!(
        agg.log("h", &name, "&from=2&to=2").expect("line 2"),
        b"after\n",
        "numbering unchanged"
    );
}

#[test]
fn delete_and_recreate_starts_a_new_generation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agg, logs, cfg) = start_pair(dir.path(), "", "");
    let log = logs.join("d.log");
    append_lines(&log, "first life", 0..500);
    let first = std::fs::read(&log).expect("read");
    let _agent = Agent::start(&cfg);
    let name = log.to_string_lossy().into_owned();
    assert!(wait_until(Duration::from_secs(10), || shipped_exactly(
        &agg, "h", &log
    )));
    std::fs::remove_file(&log).expect("delete");
    append_lines(&log, "second life", 0..300);
    assert!(wait_until(Duration::from_secs(10), || shipped_exactly(
        &agg, "h", &log
    )));
    let gens = generations(&agg, "h", &name);
    assert_eq!(gens.len(), 2, "{gens:?}");
    let old = agg
        .log("h", &name, &format!("&generation={}", enc(&gens[0].0)))
        .expect("old generation");
    assert_eq!(old, first, "the first life is intact");
}

#[test]
fn rotation_while_the_agent_is_stopped_finishes_the_old_file_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agg, logs, cfg) = start_pair(dir.path(), "", "rotate_wait = \"200ms\"");
    let log = logs.join("app.log");
    append_lines(&log, "before", 0..1000);
    ship_then_stop(&agg, &cfg, &log);
    // While the agent is down: the app writes more, then the file is rotated away
    // (to a name the glob does not match) and a new one begins.
    append_lines(&log, "late in the old file", 1000..1500);
    let rotated = logs.join("app.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    append_lines(&log, "new file", 0..200);
    let _agent = Agent::start(&cfg);
    let old_full = std::fs::read(&rotated).expect("read rotated");
    assert_old_and_new_generations(
        &agg,
        &log,
        &old_full,
        "old generation finished from the renamed file, new one shipped",
    );
}

#[test]
fn five_thousand_files_under_ulimit_1024() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    let files: Vec<PathBuf> = (0..5000)
        .map(|i| logs.join(format!("d{}/f{i}.log", i % 50)))
        .collect();
    for f in &files {
        std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
        std::fs::write(
            f,
            format!("file {} line 0\nfile {} line 1\n", f.display(), f.display()),
        )
        .expect("write");
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
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 1024 && exec {} --config {}",
            bin("agent").display(),
            cfg.display()
        ))
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn agent under ulimit");
    let agent = Proc {
        child,
        name: "agent",
    };
    let all = || agg.files_with_lines("h", 2);
    assert!(
        wait_until(Duration::from_secs(120), || all() == 5000),
        "only {} of 5000 files shipped",
        all()
    );
    let fds = std::fs::read_dir(format!("/proc/{}/fd", agent.child.id())).map_or(0, |d| d.count());
    assert!(fds < 1024, "{fds} descriptors open");
    // Appends to a few of them still arrive (files closed under pressure are reopened).
    for f in files.iter().step_by(1000) {
        append_lines(f, "later", 2..4);
    }
    assert!(wait_until(Duration::from_secs(30), || files
        .iter()
        .step_by(1000)
        .all(|f| shipped_exactly(&agg, "h", f))));
}

/// A named pipe beside the logs (a syslog FIFO, a debugging leftover) must never be opened:
/// `open` of a FIFO blocks until a writer appears, and the agent looks beside a file for its
/// copy after a truncation and for the file itself after a rename. Before the fix each of
/// those opened every entry of the directory, and the FIFO held a tokio worker for good.
#[test]
fn a_named_pipe_beside_the_logs_never_hangs_a_pipeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let fifo = logs.join("pipe");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success(), "mkfifo failed");
    let app = logs.join("app.log");
    let other = logs.join("other.log");
    append_lines(&app, "app", 0..200);
    append_lines(&other, "other", 0..100);
    let (_agent, metrics) = agent_with_metrics(
        dir.path(),
        &agg,
        &logs,
        "",
        "close_inactive = \"300ms\"\nrotate_wait = \"300ms\"",
    );
    assert!(wait_until(Duration::from_secs(10), || {
        shipped_exactly(&agg, "h", &app) && shipped_exactly(&agg, "h", &other)
    }));

    // Truncated in place with no copy beside it: the agent looks for one, finds only the
    // FIFO, and must go on with the file's new generation.
    std::fs::write(&other, b"").expect("truncate");
    append_lines(&other, "other, second life", 0..50);
    assert!(
        wait_until(Duration::from_secs(10), || shipped_exactly(
            &agg, "h", &other
        )),
        "the truncated file's new generation ships"
    );

    // Moved out of the directory while its descriptor is closed: the agent looks for it by
    // identity beside its old path, finds only the FIFO, and must let go of it.
    assert!(
        wait_until(Duration::from_secs(10), || agent_metric(
            &metrics,
            "agent_files_open"
        ) == 0.0),
        "idle files' descriptors are closed"
    );
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    std::fs::rename(&app, elsewhere.join("app.log")).expect("move away");
    assert!(
        wait_until(Duration::from_secs(5), || agent_metric(
            &metrics,
            "agent_deleted_files_held"
        ) == 1.0),
        "the agent notices the file is gone"
    );
    assert!(
        wait_until(Duration::from_secs(10), || agent_metric(
            &metrics,
            "agent_deleted_files_held"
        ) == 0.0),
        "the agent lets go of the moved file: held {}",
        agent_metric(&metrics, "agent_deleted_files_held")
    );
    append_lines(&other, "other, still shipping", 50..80);
    assert!(wait_until(Duration::from_secs(10), || shipped_exactly(
        &agg, "h", &other
    )));
}

/// A file truncated and written past where the agent had read, all while the agent did not
/// look (stopped here by SIGSTOP; in life, parked for hours behind an unreachable
/// aggregator): its size never falls below the read position, so only its first line tells
/// that it is a new generation. Before the fix the agent read on from the old position:
/// the old generation's last lines (in the copy) and the new one's first were never
/// shipped, and the new content was stored as the old generation's next lines.
#[test]
fn a_truncation_hidden_by_regrowth_still_starts_a_new_generation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agg, logs, cfg) = start_pair(dir.path(), "", "");
    let log = logs.join("app.log");
    append_lines(&log, "first life", 0..100);
    let agent = Agent::start(&cfg);
    assert!(wait_until(Duration::from_secs(10), || shipped_exactly(
        &agg, "h", &log
    )));

    agent.proc.signal("STOP");
    // More than was read before the truncation.
    let old_full = copytruncate_unseen(&log, 100..150, 0..400);
    assert!(std::fs::metadata(&log).expect("stat").len() > old_full.len() as u64);
    agent.proc.signal("CONT");

    assert_old_and_new_generations(
        &agg,
        &log,
        &old_full,
        "old generation finished from the copy, new one shipped whole",
    );
}

/// copytruncate while the agent is stopped, with lines it had not shipped: on restart its
/// checkpoint no longer belongs to the file, and the unshipped lines are only in the copy.
/// They finish the old generation before the new one starts, as when the agent runs.
#[test]
fn copytruncate_while_the_agent_is_stopped_finishes_the_old_generation_from_the_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agg, logs, cfg) = start_pair(dir.path(), "", "");
    let log = logs.join("app.log");
    append_lines(&log, "first life", 0..300);
    ship_then_stop(&agg, &cfg, &log);

    let old_full = copytruncate_unseen(&log, 300..420, 0..50);

    let _agent = Agent::start(&cfg);
    assert_old_and_new_generations(
        &agg,
        &log,
        &old_full,
        "old generation finished from the copy, new one shipped",
    );
}

/// A log whose every life begins with the same header line (a CSV header, a banner): its
/// generations cannot be told apart by their first line, which names them. Truncated
/// (copytruncate) or deleted and created again — where the new file often gets the old
/// one's inode — the new life must not be stored over the old one's lines.
#[test]
fn lives_that_begin_with_the_same_header_line_are_kept_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agg, logs, cfg) = start_pair(dir.path(), "", "");
    let log = logs.join("metrics.csv.log");
    let header = b"timestamp,host,value\n";
    let life = |n: usize, rows: std::ops::Range<usize>| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open");
        for i in rows {
            writeln!(f, "2026-11-30T00:00:{i:05},life-{n},{}", i * 7).expect("write");
        }
    };
    std::fs::write(&log, header).expect("header");
    life(1, 0..300);
    let _agent = Agent::start(&cfg);
    let name = log.to_string_lossy().into_owned();
    assert!(wait_until(Duration::from_secs(10), || shipped_exactly(
        &agg, "h", &log
    )));
    let mut lives = vec![std::fs::read(&log).expect("read")];

    // copytruncate: the copy is kept beside the file, the file starts over with its header.
    std::fs::copy(&log, logs.join("metrics.csv.log.1")).expect("copy");
    std::fs::write(&log, header).expect("truncate to the header");
    life(2, 0..100);
    assert!(wait_until(Duration::from_secs(10), || shipped_exactly(
        &agg, "h", &log
    )));
    lives.push(std::fs::read(&log).expect("read"));

    // Deleted and created again (often on the same inode).
    std::fs::remove_file(&log).expect("delete");
    std::fs::write(&log, header).expect("create");
    life(3, 0..50);
    assert!(wait_until(Duration::from_secs(10), || shipped_exactly(
        &agg, "h", &log
    )));
    lives.push(std::fs::read(&log).expect("read"));

    let stored = |gens: &[(String, u64)]| -> Vec<Vec<u8>> {
        gens.iter()
            .map(|(g, _)| {
                agg.log("h", &name, &format!("&generation={}", enc(g)))
                    .unwrap_or_default()
            })
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || stored(&generations(
            &agg, "h", &name
        )) == lives),
        "three generations, each byte-identical to its life: {:?}",
        generations(&agg, "h", &name)
    );
}

/// copytruncate of a log whose lives share their first line, with older copies beside it
/// (`rotate 20`): every copy starts as the current generation does, and only the newest holds
/// its rest. Reading the rest from an older copy stored another day's lines as this one's.
#[test]
fn copytruncate_finishes_from_the_newest_copy_when_older_ones_share_the_first_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agg, logs, cfg) = start_pair(dir.path(), "", "");
    let log = logs.join("table.log");
    let header = b"timestamp,host,value\n".to_vec();
    let rows = |life: usize, range: std::ops::Range<usize>| {
        let mut out = Vec::new();
        for i in range {
            writeln!(out, "2026-11-{life:02}T00:00:{i:05},h,{}", i * 3).expect("fmt");
        }
        out
    };
    // Older copies from earlier rotations: same header, longer than today's file will be.
    for n in 2..22 {
        let mut old = header.clone();
        old.extend(rows(n, 0..1000));
        std::fs::write(logs.join(format!("table.log.{n}")), old).expect("older copy");
    }
    let mut today = header.clone();
    today.extend(rows(1, 0..300));
    std::fs::write(&log, &today).expect("write");
    let agent = Agent::start(&cfg);
    assert!(wait_until(Duration::from_secs(10), || shipped_exactly(
        &agg, "h", &log
    )));

    agent.proc.signal("STOP");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("open");
    f.write_all(&rows(1, 300..400)).expect("unread rows");
    drop(f);
    let copy = logs.join("table.log.1");
    std::fs::copy(&log, &copy).expect("copy");
    let old_full = std::fs::read(&copy).expect("read copy");
    let mut fresh = header.clone();
    fresh.extend(rows(30, 0..20));
    std::fs::write(&log, &fresh).expect("truncate and write");
    agent.proc.signal("CONT");

    assert_old_and_new_generations(
        &agg,
        &log,
        &old_full,
        "old generation finished from table.log.1",
    );
}

/// `read_from = "end"` skips what the files held when the agent started, as in Fluent Bit
/// (`read_from_head = false`) and Vector: it is about files present at startup. A file that
/// appears later — a new log, or the file `logrotate` creates after a rotation — is read
/// from its first line; skipping to its end lost whatever was written before discovery.
#[test]
fn read_from_end_skips_only_what_was_there_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let old = logs.join("old.log");
    append_lines(&old, "history", 0..100);
    let (_agent, metrics) = agent_with_metrics(dir.path(), &agg, &logs, "", "read_from = \"end\"");
    let old_name = old.to_string_lossy().into_owned();
    // Once the agent is tailing old.log (numbering counted from its start), new lines ship
    // under their true numbers and the history does not.
    assert!(wait_until(Duration::from_secs(10), || agent_metric(
        &metrics,
        "agent_files_tracked"
    ) == 1.0));
    append_lines(&old, "after start", 100..110);
    assert!(
        wait_until(Duration::from_secs(10), || generations(
            &agg, "h", &old_name
        )
        .first()
        .is_some_and(|(_, n)| *n == 10)),
        "only the lines written after start: {:?}",
        generations(&agg, "h", &old_name)
    );
    // A file created while the agent runs, with lines already in it when it is found.
    let new = logs.join("new.log");
    append_lines(&new, "born after start", 0..200);
    assert!(
        wait_until(Duration::from_secs(10), || shipped_exactly(&agg, "h", &new)),
        "a new file is read from its first line: {:?}",
        generations(&agg, "h", &new.to_string_lossy())
    );
}

/// A watched directory deleted and created again (an application that recreates its log
/// directory at start) is watched again: appends in it are seen at once, not only by the
/// poll (`poll_interval`, 5 s here).
#[test]
fn a_watched_directory_created_again_is_watched_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agg, logs, cfg) = start_pair(dir.path(), "", "");
    let text = std::fs::read_to_string(&cfg).expect("read config");
    std::fs::write(
        &cfg,
        text.replace("poll_interval = \"500ms\"", "poll_interval = \"5s\""),
    )
    .expect("write config");
    let first = logs.join("a.log");
    append_lines(&first, "first", 0..10);
    let _agent = Agent::start(&cfg);
    assert!(wait_until(Duration::from_secs(10), || shipped_exactly(
        &agg, "h", &first
    )));
    std::fs::remove_dir_all(&logs).expect("delete the directory");
    std::fs::create_dir_all(&logs).expect("create it again");
    let second = logs.join("b.log");
    append_lines(&second, "second", 0..10);
    // Found by the next poll, at most 5 s away.
    assert!(wait_until(Duration::from_secs(15), || shipped_exactly(
        &agg, "h", &second
    )));
    // From then on each append ships well within a poll interval.
    for i in 0..5 {
        let t = std::time::Instant::now();
        append_lines(&second, "later", 10 + i..11 + i);
        assert!(wait_until(Duration::from_secs(10), || shipped_exactly(
            &agg, "h", &second
        )));
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "append {i} took {:?}: seen by the poll, not the watcher",
            t.elapsed()
        );
    }
}
