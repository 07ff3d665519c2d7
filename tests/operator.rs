//! Issue 31: the operator's view of the agent — readiness and endpoint series that follow a
//! reload, a fixing reload that takes effect at once, lag visible during an outage, and a
//! preflight that exits 78 for a config the process cannot run with.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use logship_e2e::*;

/// An agent config shipping `logs/*.log` to `url` with `token`, its metrics on `metrics`,
/// and a backoff long enough (up to 60 s) that waiting it out cannot pass for a reload.
fn slow_retry_toml(dir: &Path, url: &str, token: &str, metrics: &str) -> String {
    format!(
        "host = \"h\"\nstate_dir = {:?}\npoll_interval = \"200ms\"\nmetrics_listen = {metrics:?}\n\n\
         [sink]\nurl = {url:?}\ntoken = {token:?}\n\n\
         [defaults]\nlinger = \"20ms\"\nretry = {{ initial = \"2s\", max = \"60s\" }}\n\n\
         [[sources]]\npaths = [{:?}]\n",
        dir.join("state").display().to_string(),
        dir.join("logs/*.log").display().to_string(),
    )
}

fn readyz(metrics: &str) -> (u16, String) {
    match ureq::get(&format!("http://{metrics}/readyz"))
        .timeout(Duration::from_secs(5))
        .call()
    {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

fn metrics_text(metrics: &str) -> String {
    ureq::get(&format!("http://{metrics}/metrics"))
        .timeout(Duration::from_secs(5))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .unwrap_or_default()
}

/// Sends SIGHUP and returns how long until `file` downloads as `want` (20 s at most).
fn reload_until_shipped(agent: &Agent, agg: &Aggregator, file: &Path, want: &[u8]) -> Duration {
    let file = file.display().to_string();
    let hup = Instant::now();
    agent.proc.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(20), || agg
            .log("h", &file, "")
            .ok()
            .as_deref()
            == Some(want)),
        "the lines never arrived after the fixing reload"
    );
    hup.elapsed()
}

/// An agent shipping `logs/app.log` (`lines` lines) to a port nobody listens on, with the
/// slow retries of [`slow_retry_toml`]; the temporary directory lives as long as it does.
struct Stranded {
    dir: tempfile::TempDir,
    file: PathBuf,
    /// The file's bytes: what the aggregator must hold once the sink is fixed.
    want: Vec<u8>,
    dead: String,
    metrics: String,
    cfg: PathBuf,
    agent: Agent,
}

impl Stranded {
    fn start(lines: usize) -> Stranded {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_path_buf();
        std::fs::create_dir_all(d.join("logs")).expect("mkdir");
        let file = d.join("logs/app.log");
        append_lines(&file, "app", 0..lines);
        let want = std::fs::read(&file).expect("read");
        let dead = format!("http://{}/store/batch", free_addr());
        let metrics = free_addr();
        let cfg = d.join("agent.toml");
        std::fs::write(&cfg, slow_retry_toml(&d, &dead, "t1", &metrics)).expect("write");
        let agent = Agent::start(&cfg);
        Stranded {
            dir,
            file,
            want,
            dead,
            metrics,
            cfg,
            agent,
        }
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until the agent has retried the dead sink `n` times (`within`).
    fn retried(&self, n: f64, within: Duration) {
        assert!(
            wait_until(within, || agent_metric(
                &self.metrics,
                "agent_retries_total"
            ) >= n),
            "the agent did not retry the dead endpoint {n} times"
        );
    }

    /// Points the config at `url` with `token` (applied at the next SIGHUP).
    fn point_at(&self, url: &str, token: &str) {
        std::fs::write(
            &self.cfg,
            slow_retry_toml(self.d(), url, token, &self.metrics),
        )
        .expect("write");
    }
}

#[test]
fn a_reload_that_fixes_the_sink_takes_effect_at_once_and_readiness_follows_it() {
    // 1. A sink on a port nobody listens on: retries back off toward 60 s.
    let s = Stranded::start(50);
    let (d, dead, metrics) = (s.d(), &s.dead, &s.metrics);
    s.retried(3.0, Duration::from_secs(30));
    let (code, body) = readyz(metrics);
    assert_eq!(code, 503, "readyz with the sink unreachable: {body}");

    // 2. The config now names a live aggregator, with a token it refuses: after the reload
    //    readiness asks the new endpoint, and the old endpoint's series are gone.
    let agg = Aggregator::with_config(d, "[auth]\nwrite_tokens = [\"t1\"]\n");
    let live = agg.url("/store/batch");
    s.point_at(&live, "wrong");
    s.agent.proc.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || readyz(metrics).0 == 200),
        "readyz still answers for the endpoint the reload removed: {:?}",
        readyz(metrics)
    );
    assert!(
        wait_until(Duration::from_secs(10), || agent_metric(
            metrics,
            "agent_parked_files"
        ) >= 1.0),
        "the wrong token did not park the file"
    );
    let text = metrics_text(metrics);
    let old_endpoint = dead.trim_end_matches("/store/batch");
    assert!(
        !text.lines().any(|l| l.contains(old_endpoint)),
        "series of the removed endpoint {old_endpoint} are still exported:\n{}",
        text.lines()
            .filter(|l| l.contains(old_endpoint))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("agent_endpoint_up{") && l.contains(&live)),
        "the new endpoint has no agent_endpoint_up series"
    );
    // Let the parked file's backoff grow past what a fixed token should wait.
    assert!(
        wait_until(Duration::from_secs(30), || count_parked_attempts(
            metrics, &live
        ) >= 3.0),
        "the refused endpoint was not tried three times"
    );

    // 3. The right token: delivered at once, not after the parked file's backoff.
    s.point_at(&live, "t1");
    let took = reload_until_shipped(&s.agent, &agg, &s.file, &s.want);
    eprintln!("delivered {took:?} after the reload that fixed the token");
    assert!(
        took < Duration::from_secs(2),
        "the fixed token took effect after {took:?}: the old backoff was waited out"
    );
    assert_eq!(readyz(metrics).0, 200);
}

/// Requests the endpoint answered with a refusal that parks files.
fn count_parked_attempts(metrics: &str, endpoint: &str) -> f64 {
    metrics_text(metrics)
        .lines()
        .filter(|l| {
            l.starts_with("agent_endpoint_requests_total{")
                && l.contains(endpoint)
                && l.contains("outcome=\"park\"")
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_reload_that_fixes_an_unreachable_sink_delivers_at_once() {
    let s = Stranded::start(50);
    // Past three failures the next delay is drawn from up to 16 s.
    s.retried(4.0, Duration::from_secs(40));
    let agg = Aggregator::with_config(s.d(), "[auth]\nwrite_tokens = [\"t1\"]\n");
    s.point_at(&agg.url("/store/batch"), "t1");
    let took = reload_until_shipped(&s.agent, &agg, &s.file, &s.want);
    eprintln!("delivered {took:?} after the reload that fixed the URL");
    assert!(
        took < Duration::from_secs(2),
        "the fixed URL took effect after {took:?}: the old backoff was waited out"
    );
}

#[test]
fn lag_is_measured_during_an_outage_and_clears_when_delivered() {
    let s = Stranded::start(200);
    let (file, metrics) = (&s.file, &s.metrics);
    let size = s.want.len() as f64;
    let unshipped = format!("agent_unshipped_bytes{{file=\"{}\"}}", file.display());
    // Nothing was ever acknowledged, yet the whole file shows as unshipped ...
    assert!(
        wait_until(Duration::from_secs(20), || agent_metric(
            metrics, &unshipped
        ) == size),
        "agent_unshipped_bytes during the outage: {} (file {size} bytes)",
        agent_metric(metrics, &unshipped)
    );
    // ... and the oldest line's wait grows.
    assert!(
        wait_until(Duration::from_secs(20), || agent_metric(
            metrics,
            "agent_oldest_unacked_age_seconds"
        ) >= 2.0),
        "agent_oldest_unacked_age_seconds stayed at {}",
        agent_metric(metrics, "agent_oldest_unacked_age_seconds")
    );
    // The aggregator comes: both fall to 0, and the endpoint's last ack is now.
    let agg = Aggregator::with_config(s.d(), "[auth]\nwrite_tokens = [\"t1\"]\n");
    s.point_at(&agg.url("/store/batch"), "t1");
    reload_until_shipped(&s.agent, &agg, file, &s.want);
    assert!(
        wait_until(Duration::from_secs(10), || agent_metric(
            metrics, &unshipped
        ) == 0.0
            && agent_metric(metrics, "agent_oldest_unacked_age_seconds") == 0.0),
        "after delivery: unshipped {}, oldest unacked {} s",
        agent_metric(metrics, &unshipped),
        agent_metric(metrics, "agent_oldest_unacked_age_seconds")
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let last_ack = agent_metric(metrics, "agent_endpoint_last_ack_timestamp_seconds{");
    assert!(
        (now - last_ack).abs() < 60.0,
        "agent_endpoint_last_ack_timestamp_seconds is {last_ack}, now is {now}"
    );
}

/// An agent config for the preflight tests: `logs/*.log` and a second, misspelt pattern.
fn preflight_toml(dir: &Path, state_dir: &Path, url: &str, token: &str) -> String {
    format!(
        "host = \"h\"\nstate_dir = {:?}\n\n[sink]\nurl = {url:?}\ntoken = {token:?}\n\n\
         [[sources]]\npaths = [{:?}, {:?}]\n",
        state_dir.display().to_string(),
        dir.join("logs/*.log").display().to_string(),
        dir.join("nginx/acess.log").display().to_string(),
    )
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn check_config_is_a_preflight_and_a_config_the_agent_cannot_run_with_exits_78() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    chmod(d, 0o755); // the user nobody walks in
    std::fs::create_dir_all(d.join("logs")).expect("mkdir");
    std::fs::create_dir_all(d.join("nginx")).expect("mkdir");
    append_lines(&d.join("logs/app.log"), "app", 0..3);
    append_lines(&d.join("logs/secret.log"), "secret", 0..3);
    chmod(&d.join("logs/secret.log"), 0o000);
    // A FIFO among the matches: the check must not block opening it.
    let mut mkfifo = std::process::Command::new("mkfifo");
    mkfifo.arg(d.join("logs/pipe.log"));
    assert_eq!(run_command(mkfifo, Duration::from_secs(10)).0, 0, "mkfifo");
    let state = d.join("state");
    std::fs::create_dir_all(&state).expect("mkdir");
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        preflight_toml(d, &state, "http://127.0.0.1:9/store/batch", "t"),
    )
    .expect("write");
    let cfg_arg = cfg.display().to_string();

    // As an operator's unprivileged agent: root's state_dir is not writable for it.
    let (code, out, err) = run_bin_as_nobody(
        "agent",
        &["--config", &cfg_arg, "--check-config"],
        Duration::from_secs(30),
    );
    assert_eq!(
        code, 78,
        "--check-config with an unwritable state_dir: {out}\n{err}"
    );
    assert!(
        out.contains("# error: state_dir") && out.contains("not writable"),
        "{out}"
    );
    assert!(
        out.contains("# warning: cannot read") && out.contains("secret.log"),
        "the unreadable file is not named: {out}"
    );
    assert!(
        !out.lines()
            .any(|l| l.starts_with(&d.join("logs/secret.log").display().to_string())),
        "the unreadable file is listed as shipped: {out}"
    );
    assert!(
        out.contains("acess.log") && out.contains("matches no file"),
        "the misspelt pattern is not named: {out}"
    );
    assert!(
        out.contains("# limits: max_in_flight = "),
        "values in effect not printed: {out}"
    );
    // The agent itself exits 78 too (the shipped unit does not restart on it), naming the key.
    let (code, _, err) =
        run_bin_as_nobody("agent", &["--config", &cfg_arg], Duration::from_secs(30));
    assert_eq!(code, 78, "the agent with an unwritable state_dir: {err}");
    assert!(err.contains("state_dir"), "{err}");

    // Writable: the check passes (exit 0) and still warns.
    chmod(&state, 0o777);
    let (code, out, err) = run_bin_as_nobody(
        "agent",
        &["--config", &cfg_arg, "--check-config"],
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("# 1 file(s) would be shipped now:"), "{out}");
    assert!(out.contains("matches no file"), "{out}");

    assert!(out.contains("pipe.log"), "the FIFO is not named: {out}");
    // A state_dir that does not exist yet is checked, not created (the check may run as
    // another user than the agent).
    let later = d.join("later-state");
    std::fs::write(
        &cfg,
        preflight_toml(d, &later, "http://127.0.0.1:9/store/batch", "t"),
    )
    .expect("write");
    let (code, out, err) = run_bin(
        "agent",
        &["--config", &cfg_arg, "--check-config"],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!later.exists(), "--check-config created the state_dir");
    // Even root cannot make a state_dir under a regular file.
    let under_file = d.join("logs/app.log/state");
    std::fs::write(
        &cfg,
        preflight_toml(d, &under_file, "http://127.0.0.1:9/store/batch", "t"),
    )
    .expect("write");
    let (code, _, err) = run_bin(
        "agent",
        &["--config", &cfg_arg],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(code, 78, "{err}");
}

#[test]
fn check_sink_reports_a_refused_token_an_unreachable_url_and_a_good_sink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::create_dir_all(d.join("logs")).expect("mkdir");
    append_lines(&d.join("logs/app.log"), "app", 0..3);
    let agg = Aggregator::with_config(d, "[auth]\nwrite_tokens = [\"t1\"]\n");
    let cfg = d.join("agent.toml");
    let cfg_arg = cfg.display().to_string();
    let check = |url: &str, token: &str| {
        std::fs::write(&cfg, preflight_toml(d, &d.join("state"), url, token)).expect("write");
        run_bin(
            "agent",
            &["--config", &cfg_arg, "--check-sink"],
            &[],
            Duration::from_secs(60),
        )
    };
    let (code, out, err) = check(&agg.url("/store/batch"), "t1");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("accepted an authenticated batch"), "{out}");
    let (code, _, err) = check(&agg.url("/store/batch"), "wrong");
    assert_eq!(code, 78, "a refused token: {err}");
    assert!(err.contains("refuses") && err.contains("401"), "{err}");
    let (code, _, err) = check(&agg.url("/no/such/route"), "t1");
    assert_eq!(code, 78, "a wrong URL path: {err}");
    let (code, _, err) = check(&format!("http://{}/store/batch", free_addr()), "t1");
    assert_eq!(code, 1, "an unreachable sink: {err}");
    assert!(err.contains("not reachable"), "{err}");
    // The checks stored nothing.
    let files = get(&agg.url("/store/files")).text();
    assert!(!files.contains("agent-check-sink"), "{files}");
}

#[test]
fn the_aggregator_sees_its_fleet_and_logs_refusals_once_a_minute_per_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("aggregator.log");
    let agg = Aggregator::with_config_logged(dir.path(), "[auth]\nwrite_tokens = [\"t1\"]\n", &log);
    let body = |host: &str| {
        let mut w = logship_wire::compact::Writer::new(host, "/var/log/app.log", "g", 0);
        w.push(b"a line", false);
        w.push(b"another", false);
        w.finish()
    };
    let send = |host: &str, token: &str| {
        post(
            &agg.url("/store/batch"),
            &body(host),
            &[
                ("Content-Type", logship_wire::COMPACT_CONTENT_TYPE),
                ("Authorization", &format!("Bearer {token}")),
            ],
        )
        .status
    };
    for _ in 0..8 {
        assert_eq!(send("web-1", "wrong"), 401);
    }
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("request refused"))),
        "no log line for eight refused batches"
    );
    let text = std::fs::read_to_string(&log).expect("log");
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    assert_eq!(
        refused.len(),
        1,
        "eight refusals from one address, within a minute: {refused:?}"
    );
    assert!(
        refused[0].contains("127.0.0.1"),
        "the client address is named: {}",
        refused[0]
    );
    assert!(
        !text.contains("wrong"),
        "the token given must not be logged: {text}"
    );

    assert_eq!(send("web-1", "t1"), 200);
    assert_eq!(send("db-1", "t1"), 200);
    assert_eq!(send("db-1", "t1"), 200);
    let metrics = get(&agg.url("/metrics")).text();
    assert_eq!(
        metric(&metrics, "aggregator_host_lines_total{host=\"web-1\"}"),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "aggregator_host_lines_total{host=\"db-1\"}"),
        4.0,
        "{metrics}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let seen = metric(
        &metrics,
        "aggregator_host_last_seen_timestamp_seconds{host=\"db-1\"}",
    );
    assert!(
        (now - seen).abs() < 60.0,
        "db-1 last seen at {seen}, now {now}"
    );
}

#[test]
fn reloads_refusals_and_failures_are_observable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::create_dir_all(d.join("logs")).expect("mkdir");
    std::fs::create_dir_all(d.join("elsewhere")).expect("mkdir");
    append_lines(&d.join("logs/app.log"), "app", 0..3);
    // A symlink out of the source's directories: refused, by reason.
    append_lines(&d.join("elsewhere/secret.log"), "secret", 0..3);
    std::os::unix::fs::symlink(d.join("elsewhere/secret.log"), d.join("logs/link.log"))
        .expect("symlink");
    let dead = format!("http://{}/store/batch", free_addr());
    let metrics = free_addr();
    let cfg = d.join("agent.toml");
    std::fs::write(&cfg, slow_retry_toml(d, &dead, "t1", &metrics)).expect("write");
    let log = d.join("agent.log");
    let agent = Agent::start_logged(&cfg, &[("RUST_LOG", "info")], &log);
    let logged = |what: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(what)
    };
    // The connect error says why, as /readyz does.
    assert!(
        wait_until(Duration::from_secs(20), || logged("Connection refused")),
        "the retry log does not give the OS reason:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        wait_until(Duration::from_secs(10), || agent_metric(
            &metrics,
            "agent_files_refused_total{reason=\"symlink\"}"
        ) == 1.0),
        "agent_files_refused_total by reason: {}",
        metrics_text(&metrics)
            .lines()
            .filter(|l| l.contains("files_refused"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let info = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("agent_config_info{"))
            .map(str::to_owned)
            .collect()
    };
    let before = info(&metrics_text(&metrics));
    assert_eq!(before.len(), 1, "{before:?}");

    // The link becomes a real file: shipped, and the log says so.
    std::fs::remove_file(d.join("logs/link.log")).expect("rm");
    append_lines(&d.join("logs/link.log"), "now real", 0..3);
    // A reload that changes one key: counted, named, and the config hash moves.
    let changed =
        slow_retry_toml(d, &dead, "t1", &metrics).replace("linger = \"20ms\"", "linger = \"30ms\"");
    std::fs::write(&cfg, changed).expect("write");
    agent.proc.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || agent_metric(
            &metrics,
            "agent_config_reloads_total"
        ) == 1.0),
        "the reload was not counted"
    );
    assert!(
        wait_until(Duration::from_secs(10), || logged(
            "changed=defaults.linger"
        )),
        "the reload log does not name the key changed:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let after = info(&metrics_text(&metrics));
    assert_eq!(after.len(), 1, "one config_info series: {after:?}");
    assert_ne!(before, after, "the config hash did not change");
    assert!(
        wait_until(Duration::from_secs(10), || logged("now shipping this file")),
        "no line says the refused file is shipped now"
    );
    // A bad file is counted as a failed reload.
    std::fs::write(&cfg, "this is = = not toml").expect("write");
    agent.proc.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || agent_metric(
            &metrics,
            "agent_config_reload_failures_total"
        ) == 1.0),
        "the failed reload was not counted"
    );
}

#[test]
fn a_start_failure_is_said_once_and_the_aggregator_reload_names_the_keys_it_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let log = d.join("aggregator.log");
    let agg = Aggregator::with_config_logged(d, "[limits]\nper_host_lines_per_sec = 1000\n", &log);
    std::fs::write(
        d.join("agg.toml"),
        "[limits]\nper_host_lines_per_sec = 2000\n",
    )
    .expect("write");
    agg.proc.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("configuration reloaded")
                && l.contains("limits.per_host_lines_per_sec"))),
        "the aggregator's reload log does not name the key:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // An agent whose metrics port is taken fails after its log is set up: one line says so.
    std::fs::create_dir_all(d.join("logs")).expect("mkdir");
    let taken = agg.addr().to_owned();
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        slow_retry_toml(d, &agg.url("/store/batch"), "t", &taken),
    )
    .expect("write");
    let (code, _, err) = run_bin(
        "agent",
        &["--config", &cfg.display().to_string()],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(code, 1, "{err}");
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("metrics_listen"))
        .collect();
    assert_eq!(
        said.len(),
        1,
        "the failure is said {} times:\n{err}",
        said.len()
    );
}
