//! Issue 11.9, 11.10, 11.12: the agent never loses a batch to a refusal that is not the
//! batch's fault (wrong token, wrong URL, an endpoint that answers 200 to anything), refuses
//! names the server cannot take, and does not follow symlinks out of its directories.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use logship_e2e::*;

fn dead_letters(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("state/dead-letter")).map_or(0, |d| d.count())
}

/// Writes the agent config for `url` and `token`, with a metrics listener at `metrics`.
fn config(dir: &Path, url: &str, token: &str, metrics: &str) -> std::path::PathBuf {
    agent_config(
        dir,
        url,
        "h",
        &[&format!("{}/*.log", dir.join("logs").display())],
        &format!("metrics_listen = {metrics:?}\nshutdown_timeout = \"2s\""),
        "",
    );
    let p = dir.join("agent.toml");
    let text = std::fs::read_to_string(&p).expect("read");
    let text = text.replace("[sink]\n", &format!("[sink]\ntoken = {token:?}\n"));
    std::fs::write(&p, text).expect("write");
    p
}

/// Waits until the agent reports `n` or more parked files.
fn parked(metrics: &str, n: f64) -> bool {
    wait_until(Duration::from_secs(20), || {
        agent_metric(metrics, "agent_parked_files ") >= n
    })
}

#[test]
fn wrong_url_and_wrong_token_park_files_and_fixing_the_config_delivers_everything_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let agg = Aggregator::with_config(dir.path(), "[auth]\nwrite_tokens = [\"right\"]\n");
    let files: Vec<_> = (0..5).map(|i| logs.join(format!("f{i}.log"))).collect();
    for f in &files {
        append_lines(f, &f.display().to_string(), 0..1_000);
    }
    // A name the aggregator cannot take: refused by the agent, not sent.
    std::fs::write(logs.join("bad\nname.log"), "x\n").expect("write");
    let metrics = free_addr();

    // 1. A wrong URL (404), then 2. a wrong token (401): files park, nothing dead-lettered.
    for (url, token) in [
        (agg.url("/store/batches"), "right"),
        (agg.url("/store/batch"), "wrong"),
    ] {
        let mut agent = Agent::start(&config(dir.path(), &url, token, &metrics));
        assert!(
            parked(&metrics, 5.0),
            "files did not park for {url} / {token}"
        );
        // More lines arrive while parked.
        for f in &files {
            append_lines(f, &f.display().to_string(), 0..100);
        }
        assert!(agent_metric(&metrics, "agent_files_refused_total{reason=\"name\"}") >= 1.0);
        agent.proc.signal("TERM");
        assert!(
            agent.proc.wait_exit(Duration::from_secs(40)).is_some(),
            "agent did not stop"
        );
        assert_eq!(dead_letters(dir.path()), 0, "a refusal was dead-lettered");
        assert_eq!(
            get(&agg.url("/store/hosts")).json()["hosts"],
            serde_json::json!([])
        );
    }
    // 3. Fixed: every line arrives exactly once.
    let _agent = Agent::start(&config(
        dir.path(),
        &agg.url("/store/batch"),
        "right",
        &metrics,
    ));
    assert!(
        wait_until(Duration::from_secs(60), || files
            .iter()
            .all(|f| shipped_exactly(&agg, "h", f))),
        "not every line arrived after the fix"
    );
    assert_eq!(dead_letters(dir.path()), 0);
    assert!(
        wait_until(Duration::from_secs(10), || agent_metric(
            &metrics,
            "agent_parked_files "
        ) == 0.0),
        "files still parked"
    );
    let listed = get(&agg.url("/store/files?host=h")).json();
    assert_eq!(
        listed["files"].as_array().map(Vec::len),
        Some(5),
        "{listed}"
    );
}

/// A server that answers `200 ok` to every request, like a wrong URL behind a proxy.
fn yes_server() -> (String, Arc<AtomicU32>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let seen = Arc::new(AtomicU32::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { return };
            let count = count.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                let mut r = BufReader::new(conn);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if r.get_mut().write_all(ok).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/store/batch"), seen)
}

#[test]
fn a_200_that_is_not_an_acknowledgement_moves_no_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let files: Vec<_> = (0..3).map(|i| logs.join(format!("f{i}.log"))).collect();
    for f in &files {
        append_lines(f, &f.display().to_string(), 0..2_000);
    }
    let (url, seen) = yes_server();
    let metrics = free_addr();
    let mut agent = Agent::start(&config(dir.path(), &url, "t", &metrics));
    assert!(
        parked(&metrics, 3.0),
        "files did not park on a 200 that acknowledges nothing"
    );
    // The three files' batches may share a request (the multi-file form).
    assert!(seen.load(Ordering::SeqCst) >= 1);
    agent.proc.signal("TERM");
    assert!(
        agent.proc.wait_exit(Duration::from_secs(40)).is_some(),
        "agent did not stop"
    );
    assert_eq!(dead_letters(dir.path()), 0);
    // Pointed at a real aggregator, everything arrives: no checkpoint moved for the fake acks.
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let _agent = Agent::start(&config(dir.path(), &agg.url("/store/batch"), "t", &metrics));
    assert!(
        wait_until(Duration::from_secs(60), || files
            .iter()
            .all(|f| shipped_exactly(&agg, "h", f))),
        "lines 'acknowledged' by the fake endpoint were lost"
    );
}

#[test]
fn symlinks_out_of_the_watched_directories_are_not_followed_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    let outside = dir.path().join("private");
    std::fs::create_dir_all(&logs).expect("mkdir");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("secret.txt"), "root-only secret\n").expect("write");
    append_lines(&logs.join("app.log"), "app", 0..50);
    std::os::unix::fs::symlink(outside.join("secret.txt"), logs.join("secret.log")).expect("link");
    // A link inside the watched directory is fine (shipped once, by identity).
    std::fs::write(logs.join("real.txt"), "inside\n").expect("write");
    std::os::unix::fs::symlink(logs.join("real.txt"), logs.join("current.log")).expect("link");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let metrics = free_addr();
    let cfg = config(dir.path(), &agg.url("/store/batch"), "t", &metrics);
    let mut agent = Agent::start(&cfg);
    assert!(wait_until(Duration::from_secs(30), || {
        shipped_exactly(&agg, "h", &logs.join("app.log"))
            && shipped_exactly(&agg, "h", &logs.join("current.log"))
    }));
    assert!(wait_until(Duration::from_secs(10), || {
        agent_metric(&metrics, "agent_files_refused_total{reason=\"symlink\"}") >= 1.0
    }));
    assert_eq!(
        agg.log("h", &logs.join("secret.log").to_string_lossy(), ""),
        Err(404)
    );
    // The link replaced by a real file at the same path: that file ships.
    std::fs::remove_file(logs.join("secret.log")).expect("unlink");
    append_lines(&logs.join("secret.log"), "now a real file", 0..3);
    assert!(
        wait_until(Duration::from_secs(30), || shipped_exactly(
            &agg,
            "h",
            &logs.join("secret.log")
        )),
        "a real file where a refused link was is not shipped"
    );
    agent.proc.signal("TERM");
    assert!(agent.proc.wait_exit(Duration::from_secs(40)).is_some());
    // Allowed explicitly, a link out of the directory ships.
    let text = std::fs::read_to_string(&cfg).expect("read");
    std::fs::write(&cfg, format!("{text}follow_symlinks = true\n")).expect("write");
    std::os::unix::fs::symlink(outside.join("secret.txt"), logs.join("linked.log")).expect("link");
    let _agent = Agent::start(&cfg);
    assert!(
        wait_until(Duration::from_secs(30), || shipped_exactly(
            &agg,
            "h",
            &logs.join("linked.log")
        )),
        "follow_symlinks = true did not ship the link"
    );
}

/// Sets `p`'s permission bits.
fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// For an agent running as `nobody` in `dir`: `dir` opened to it, `logs/` made, `state/`
/// made and given to it. Returns `logs/`.
fn dirs_for_nobody(dir: &Path) -> std::path::PathBuf {
    chmod(dir, 0o755);
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("mkdir");
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).expect("chown state to nobody");
    logs
}

/// Keeps appending to `readable` and waiting for it to ship, for ten poll intervals (500 ms
/// each): time enough for a report that repeats every poll to show.
fn ship_through_ten_polls(agg: &Aggregator, readable: &Path) {
    let start = std::time::Instant::now();
    let mut n = 1_000;
    while start.elapsed() < Duration::from_secs(5) {
        append_lines(readable, "app", n..n + 1);
        n += 1;
        assert!(wait_until(Duration::from_secs(10), || shipped_exactly(
            agg, "h", readable
        )));
    }
}

/// A file the agent may not read (an agent running as an operator's user beside root-only
/// logs): one clear error, not one every poll interval, and it ships once its permissions
/// change.
#[test]
fn an_unreadable_file_is_reported_once_and_ships_once_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dirs_for_nobody(dir.path());
    let readable = logs.join("app.log");
    let secret = logs.join("secret.log");
    append_lines(&readable, "app", 0..20);
    append_lines(&secret, "root only", 0..20);
    chmod(&secret, 0o600);
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let metrics = free_addr();
    let cfg = config(dir.path(), &agg.url("/store/batch"), "t", &metrics);
    let log = dir.path().join("agent.log");
    let _agent = Agent::start_logged_as_nobody(&cfg, &log);
    assert!(wait_until(Duration::from_secs(20), || shipped_exactly(
        &agg, "h", &readable
    )));
    ship_through_ten_polls(&agg, &readable);
    let text = std::fs::read_to_string(&log).expect("agent log");
    let reports = text
        .lines()
        .filter(|l| l.contains("secret.log") && l.to_lowercase().contains("permission denied"))
        .count();
    assert_eq!(reports, 1, "reported once, not every poll:\n{text}");
    assert_eq!(
        agg.log("h", &secret.to_string_lossy(), ""),
        Err(404),
        "nothing of it shipped"
    );
    assert!(agent_metric(&metrics, "agent_files_refused_total{reason=\"permission\"}") >= 1.0);

    chmod(&secret, 0o644);
    assert!(
        wait_until(Duration::from_secs(20), || shipped_exactly(
            &agg, "h", &secret
        )),
        "readable now, it ships:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// A watched directory the agent may not read ships nothing; the operator must hear of it
/// (it was skipped in silence), once, and `--check-config` says so too.
#[test]
fn an_unreadable_directory_is_reported_once_and_shipped_once_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dirs_for_nobody(dir.path());
    let private = logs.join("private");
    std::fs::create_dir_all(&private).expect("mkdir");
    let readable = logs.join("app.log");
    let hidden = private.join("db.log");
    append_lines(&readable, "app", 0..20);
    append_lines(&hidden, "db", 0..20);
    chmod(&private, 0o700);
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let metrics = free_addr();
    let cfg = agent_config(
        dir.path(),
        &agg.url("/store/batch"),
        "h",
        &[&format!("{}/**/*.log", logs.display())],
        &format!("metrics_listen = {metrics:?}"),
        "",
    );
    chmod(&cfg, 0o644);

    let check = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin("agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("--check-config")
        .output()
        .expect("run agent --check-config");
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains(&*private.to_string_lossy()) && l.contains("ermission denied")),
        "--check-config names the directory it cannot read:\n{out}"
    );

    let log = dir.path().join("agent.log");
    let _agent = Agent::start_logged_as_nobody(&cfg, &log);
    assert!(wait_until(Duration::from_secs(20), || shipped_exactly(
        &agg, "h", &readable
    )));
    ship_through_ten_polls(&agg, &readable);
    let text = std::fs::read_to_string(&log).expect("agent log");
    let about = |what: &str| {
        text.lines()
            .filter(|l| l.contains(&*private.to_string_lossy()) && l.contains(what))
            .count()
    };
    assert_eq!(
        about("not shipped"),
        1,
        "reported once, not every poll:\n{text}"
    );
    assert!(
        about("") <= 2,
        "(and once more by the watcher at start):\n{text}"
    );

    chmod(&private, 0o755);
    assert!(
        wait_until(Duration::from_secs(20), || shipped_exactly(
            &agg, "h", &hidden
        )),
        "readable now, its files ship:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
