//! Issue 16: operating the binaries as services — exit codes, `--version`, health
//! endpoints, log formats, metrics hygiene, cache validators and downloads, systemd units.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use logship_e2e::*;

fn run(bin_name: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin(bin_name))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exit_codes_and_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = 5\n").expect("write");
    let bad = bad.to_string_lossy().into_owned();
    // A bad config: 78 (EX_CONFIG), for a run and for --check-config, naming file and line.
    for (b, args) in [
        ("aggregator", vec!["--config", bad.as_str()]),
        (
            "aggregator",
            vec!["--config", bad.as_str(), "--check-config"],
        ),
        ("agent", vec!["--config", bad.as_str()]),
        ("agent", vec!["--config", bad.as_str(), "--check-config"]),
    ] {
        let (code, _, err) = run(b, &args);
        assert_eq!(code, Some(78), "{b} {args:?}: {err}");
        assert!(err.contains("bad.toml:1"), "{b}: {err}");
    }
    let (code, _, err) = run("aggregator", &["--log-format", "yaml"]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("log_format"), "{err}");
    // Usage errors: 2.
    for b in ["aggregator", "agent"] {
        let (code, _, _) = run(b, &["--no-such-flag"]);
        assert_eq!(code, Some(2), "{b}");
        let (code, out, _) = run(b, &["--version"]);
        assert_eq!(code, Some(0));
        assert!(out.starts_with(&format!("{b} ")), "{out}");
    }
    // A runtime failure (the store cannot be opened): 1.
    std::fs::write(dir.path().join("file"), "").expect("write");
    let data = dir.path().join("file/data");
    let (code, _, err) = run(
        "aggregator",
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data.to_string_lossy(),
        ],
    );
    assert_eq!(code, Some(1), "{err}");
    // A clean stop: 0.
    let mut agg = Aggregator::start(&dir.path().join("data"), &[]);
    agg.proc.signal("TERM");
    let status = agg.proc.wait_exit(Duration::from_secs(20)).expect("exits");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn health_endpoints_on_both_binaries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agg, logs, _) = start_pair(dir.path(), "", "");
    assert_eq!(get(&agg.url("/healthz")).status, 200);
    let ready = get(&agg.url("/readyz"));
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["status"], "ready");
    // The agent's listener: alive, and ready while the aggregator answers.
    let (_agent, metrics) = agent_with_metrics(dir.path(), &agg, &logs, "", "");
    let agent_get = |path: &str| {
        wait_until(Duration::from_secs(10), || {
            ureq::get(&format!("http://{metrics}{path}")).call().is_ok()
        })
    };
    assert!(agent_get("/healthz"), "agent /healthz");
    assert!(
        agent_get("/readyz"),
        "agent /readyz while the aggregator is up"
    );
    let m = ureq::get(&format!("http://{metrics}/metrics"))
        .call()
        .expect("metrics");
    assert_eq!(
        m.header("content-type"),
        get(&agg.url("/metrics")).header("content-type")
    );
    drop(agg);
    assert!(
        wait_until(Duration::from_secs(10), || matches!(
            ureq::get(&format!("http://{metrics}/readyz")).call(),
            Err(ureq::Error::Status(503, _))
        )),
        "agent /readyz with the aggregator gone"
    );
    // An aggregator whose store lost its active segment is not ready.
    let data = dir.path().join("data2");
    let agg = Aggregator::start(&data, &[]);
    for e in std::fs::read_dir(data.join("segments")).expect("segments") {
        std::fs::remove_file(e.expect("entry").path()).expect("remove");
    }
    let r = get(&agg.url("/readyz"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_eq!(get(&agg.url("/healthz")).status, 200);
}

#[test]
fn json_logs_parse_and_text_logs_have_no_colour_off_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (format, json) in [("json", true), ("text", false)] {
        let child = Command::new(bin("aggregator"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                format,
                "--data-dir",
            ])
            .arg(dir.path().join(format))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        assert!(
            wait_catches(child.id(), 15, Duration::from_secs(10)),
            "{format}: the aggregator never installed its SIGTERM handler"
        );
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
        assert!(lines.len() >= 2, "{format}: {err}");
        for l in &lines {
            assert!(
                !l.contains('\u{1b}'),
                "{format}: ANSI colour off a terminal: {l:?}"
            );
            if json {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
            }
        }
        assert!(err.contains("aggregator listening"), "{err}");
    }
}

#[test]
fn metrics_follow_prometheus_naming_and_per_file_series_go_with_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agg, logs, _) = start_pair(dir.path(), "", "");
    let (_agent, metrics) =
        agent_with_metrics(dir.path(), &agg, &logs, "", "rotate_wait = \"200ms\"");
    let doomed = logs.join("doomed.log");
    append_lines(&doomed, "doomed", 0..10);
    append_lines(&logs.join("stays.log"), "stays", 0..10);
    assert!(wait_until(Duration::from_secs(20), || shipped_exactly(
        &agg, "h", &doomed
    )));
    let agent_metrics = || {
        ureq::get(&format!("http://{metrics}/metrics"))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default()
    };
    let series = format!("file=\"{}\"", doomed.display());
    assert!(wait_until(Duration::from_secs(10), || agent_metrics()
        .contains(&series)));
    std::fs::remove_file(&doomed).expect("remove");
    assert!(
        wait_until(Duration::from_secs(20), || !agent_metrics()
            .contains(&series)),
        "series of a deleted file are still exported"
    );
    let m = agent_metrics();
    assert!(m.contains(&format!("file=\"{}\"", logs.join("stays.log").display())));
    assert!(m.contains("agent_buffered_bytes") && m.contains("agent_checkpoint_timestamp_seconds"));
    let a = get(&agg.url("/metrics")).text();
    for text in [&m, &a] {
        assert!(!text.contains("_kib"), "a KiB unit: {text}");
    }
    assert!(
        a.contains("aggregator_http_requests_total{route=\"batch\",code=\"200\"}"),
        "{a}"
    );
}

#[test]
fn downloads_revalidate_and_save_under_the_file_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(dir.path(), "[auth]\nread_tokens = [\"r\"]\n");
    assert_eq!(
        post_compact(&agg, "h", "/var/log/app.log", "g", 0, &[b"a", b"\xff"]).status,
        200
    );
    let url = agg.url("/store/log?host=h&file=/var/log/app.log&download=true");
    let auth = ("Authorization", "Bearer r");
    let first = get_with(&url, &[auth]);
    assert_eq!(first.status, 200);
    assert_eq!(first.body, b"a\n\xff\n");
    assert_eq!(first.header("content-type"), Some("text/plain"));
    assert_eq!(
        first.header("content-disposition"),
        Some("attachment; filename=\"app.log\"; filename*=UTF-8''app.log")
    );
    let etag = first.header("etag").expect("etag").to_owned();
    let again = get_with(&url, &[auth, ("If-None-Match", &etag)]);
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    // Last-Modified comes once the write's second is safely past (whole-second dates).
    let mut modified = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let a = get_with(&url, &[auth]);
            modified = a.header("last-modified").unwrap_or_default().to_owned();
            !modified.is_empty()
        }),
        "no Last-Modified"
    );
    assert_eq!(
        get_with(&url, &[auth, ("If-Modified-Since", &modified)]).status,
        304
    );
    // Issue 29.5: a write in the same second as the client's copy is never answered 304.
    let same = agg.url("/store/log?host=h&file=/same.log");
    for n in 0..10u64 {
        let copy_taken = httpdate::fmt_http_date(std::time::SystemTime::now());
        assert_eq!(
            post_compact(&agg, "h", "/same.log", "g", n, &[b"x"]).status,
            200
        );
        let a = get_with(&same, &[auth, ("If-Modified-Since", &copy_taken)]);
        assert_eq!(a.status, 200, "write {n}: a stale 304");
        assert_eq!(a.body.len() as u64, 2 * (n + 1));
    }
    // A write changes the answer.
    assert_eq!(
        post_compact(&agg, "h", "/var/log/app.log", "g", 2, &[b"c"]).status,
        200
    );
    let changed = get_with(&url, &[auth, ("If-None-Match", &etag)]);
    assert_eq!(changed.status, 200);
    assert_ne!(changed.header("etag"), Some(etag.as_str()));
    // The web page's cookie carries the read token for its plain download link.
    let cookie = get_with(&url, &[("Cookie", "other=1; logship_read_token=r")]);
    assert_eq!(cookie.status, 200);
    assert_eq!(
        get_with(&url, &[("Cookie", "logship_read_token=nope")]).status,
        401
    );
    assert_eq!(
        get_with(
            &agg.url("/store/hosts"),
            &[("Cookie", "logship_read_token=r")]
        )
        .status,
        401,
        "the cookie is for downloads only"
    );
}

#[test]
fn systemd_units_verify() {
    let analyze = which("systemd-analyze")
        .expect("systemd-analyze is needed: apt-get install systemd (scripts/test does)");
    let dir = tempfile::tempdir().expect("tempdir");
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/systemd");
    let mut paths = Vec::new();
    for e in std::fs::read_dir(&units).expect("examples/systemd") {
        let p = e.expect("entry").path();
        let text = std::fs::read_to_string(&p).expect("read");
        // Point the units at the binaries under test (verify checks they exist).
        let text = text.replace("/usr/local/bin/", &format!("{}/", bin_dir().display()));
        let to = dir.path().join(p.file_name().expect("name"));
        std::fs::write(&to, text).expect("write");
        paths.push(to);
    }
    assert_eq!(paths.len(), 2);
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .ok_or(())
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3 (state is not numeric).
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

/// Out of descriptors (EMFILE), the agent's metrics listener backs off instead of spinning,
/// and serves again once descriptors are free.
#[test]
fn an_exhausted_descriptor_table_does_not_spin_the_metrics_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = free_addr();
    let cfg = agent_config(
        dir.path(),
        "http://127.0.0.1:1/store/batch",
        "h",
        &[&format!("{}/*.log", dir.path().join("logs").display())],
        &format!("metrics_listen = {metrics:?}"),
        "",
    );
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 48 && exec {} --config {}",
            bin("agent").display(),
            cfg.display()
        ))
        .env("RUST_LOG", "error")
        .spawn()
        .expect("spawn agent under ulimit");
    let agent = Proc {
        child,
        name: "agent",
    };
    assert!(wait_until(Duration::from_secs(10), || ureq::get(&format!(
        "http://{metrics}/healthz"
    ))
    .call()
    .is_ok()));
    // Hold more connections than the agent has descriptors.
    let held: Vec<std::net::TcpStream> = (0..80)
        .filter_map(|_| std::net::TcpStream::connect(&metrics).ok())
        .collect();
    // The agent has used up its descriptors (48) on them before the CPU is measured.
    let fds =
        || std::fs::read_dir(format!("/proc/{}/fd", agent.child.id())).map_or(0, |d| d.count());
    assert!(
        wait_until(Duration::from_secs(10), || fds() >= 44),
        "the agent holds {} descriptors of 48",
        fds()
    );
    let before = cpu_seconds(agent.child.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(agent.child.id()) - before;
    assert!(
        used < 0.5,
        "the agent used {used} CPU s in 2 s while out of descriptors"
    );
    drop(held);
    assert!(
        wait_until(Duration::from_secs(10), || ureq::get(&format!(
            "http://{metrics}/metrics"
        ))
        .call()
        .is_ok()),
        "metrics not served after descriptors came back"
    );
}

/// A state directory the agent cannot write (it runs as its own user, the directory was made
/// by root): checkpoints could never be saved and every restart would resend everything.
/// It stops at start with an error naming the directory, rather than run for days like that.
#[test]
fn an_unwritable_state_directory_stops_the_agent_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |p: &Path| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    open(dir.path());
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("state")).expect("mkdir (root's)");
    append_lines(&logs.join("app.log"), "app", 0..5);
    let cfg = agent_config(
        dir.path(),
        "http://127.0.0.1:9/store/batch",
        "h",
        &[&format!("{}/*.log", logs.display())],
        "",
        "",
    );
    open(&cfg);
    let log = dir.path().join("agent.log");
    let mut agent = Agent::start_logged_as_nobody(&cfg, &log);
    let status = agent
        .proc
        .wait_exit(Duration::from_secs(20))
        .expect("the agent stops at start");
    let text = std::fs::read_to_string(&log).expect("agent log");
    // 78 (EX_CONFIG), which the shipped unit does not restart on (issue 31.3: it was 1, and
    // systemd restarted the agent forever).
    assert_eq!(status.code(), Some(78), "{text}");
    assert!(
        text.contains(&*dir.path().join("state").to_string_lossy())
            && text.contains("not writable"),
        "the error names the directory:\n{text}"
    );
}
