//! Helpers for the end-to-end tests: start the real `aggregator` and `agent` binaries on
//! ephemeral ports in temporary directories, talk HTTP to them, and poll with deadlines.
//! Every spawned process is killed when its handle drops.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod redis_cluster;
pub use redis_cluster::{redis_cli, Backend, RedisCluster};

/// The directory holding the binaries built with this test (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOGSHIP_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-… → target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf()
}

/// Path of a workspace binary, which must have been built (`cargo build --bins`).
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bins` first (scripts/test does)",
        p.display()
    );
    p
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process that is killed when dropped.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    /// Sends a signal by name (`TERM`, `KILL`, `INT`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.name);
    }

    /// Waits up to `timeout` until the process catches signal number `sig` (a handler is
    /// installed: `SigCgt` in `/proc/<pid>/status`), so a signal sent next is handled rather
    /// than killing a process still starting.
    pub fn wait_catches(&self, sig: u32, timeout: Duration) -> bool {
        wait_catches(self.child.id(), sig, timeout)
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory so far (VmHWM), in bytes; panics if the process has died.
    pub fn peak_rss(&self) -> u64 {
        self.memory_kib("VmHWM:") * 1024
    }

    /// Current resident memory (VmRSS), in bytes; panics if the process has died, so a
    /// bound on memory can never pass for a crashed process (it reads 0 then).
    pub fn rss(&self) -> u64 {
        self.memory_kib("VmRSS:") * 1024
    }

    fn memory_kib(&self, field: &str) -> u64 {
        let kib = logship_common::proc_status_kib(self.child.id(), field);
        if kib == 0 {
            // A process that exited and was not reaped yet is a zombie without memory
            // lines; /proc/<pid>/stat still has its exit code (the last field, wait(2) form).
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .unwrap_or_default();
            let code = stat
                .rsplit(' ')
                .find(|f| !f.trim().is_empty())
                .and_then(|c| c.trim().parse::<i32>().ok());
            let how = match code {
                Some(c) if c & 0x7f != 0 => format!("killed by signal {}", c & 0x7f),
                Some(c) => format!("exit status {}", (c >> 8) & 0xff),
                None => "already reaped".to_owned(),
            };
            panic!("{} is not running ({how}): no {field} to read", self.name);
        }
        kib
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cargo metadata --format-version 1` with `args` (the test's own cargo), as JSON; panics
/// with cargo's error when it fails.
pub fn cargo_metadata(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON")
}

/// Waits up to `timeout` until process `pid` catches signal number `sig` (`SigCgt` in
/// `/proc/<pid>/status`): its handler is installed, so the signal will be handled.
pub fn wait_catches(pid: u32, sig: u32, timeout: Duration) -> bool {
    wait_until(timeout, || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                let mask = s.lines().find(|l| l.starts_with("SigCgt:"))?;
                u64::from_str_radix(mask.split_whitespace().nth(1)?, 16).ok()
            })
            .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
    })
}

/// A running aggregator on an ephemeral port.
#[derive(Debug)]
pub struct Aggregator {
    pub proc: Proc,
    pub base: String,
    pub data_dir: PathBuf,
}

impl Aggregator {
    /// Starts `aggregator --listen 127.0.0.1:0 --data-dir DIR [extra…]` and waits for its
    /// "listening" line (10 s at most).
    pub fn start(data_dir: &Path, extra: &[&str]) -> Aggregator {
        Self::start_on(data_dir, "127.0.0.1:0", extra)
    }

    /// As [`start`](Self::start) but on a given address (to restart on the same port).
    pub fn start_on(data_dir: &Path, listen: &str, extra: &[&str]) -> Aggregator {
        Self::start_with_env(data_dir, listen, extra, &[])
    }

    /// As [`start_on`](Self::start_on) with extra environment variables.
    pub fn start_with_env(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Aggregator {
        Self::spawn(data_dir, listen, extra, env, Stdio::inherit())
    }

    /// As [`with_config`](Self::with_config), its stderr (the log, at `info`) appended to
    /// `log`.
    pub fn with_config_logged(dir: &Path, toml: &str, log: &Path) -> Aggregator {
        let cfg = dir.join("agg.toml");
        std::fs::write(&cfg, toml).expect("write aggregator config");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open aggregator log");
        Self::spawn(
            &dir.join("data"),
            "127.0.0.1:0",
            &["--config", &cfg.to_string_lossy()],
            &[("RUST_LOG", "info")],
            Stdio::from(stderr),
        )
    }

    fn spawn(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Aggregator {
        let mut cmd = Command::new(bin("aggregator"));
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .envs(env.iter().copied());
        cmd.args(["--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd.spawn().expect("spawn aggregator");
        let stdout = child.stdout.take().expect("stdout");
        let proc = Proc {
            child,
            name: "aggregator",
        };
        let base = read_listen_line(stdout, "aggregator listening on ", Duration::from_secs(10))
            .expect("aggregator did not report its address within 10 s");
        Aggregator {
            proc,
            base,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Writes `toml` to `dir/agg.toml` and starts an aggregator with it, its store in
    /// `dir/data`.
    pub fn with_config(dir: &Path, toml: &str) -> Aggregator {
        let cfg = dir.join("agg.toml");
        std::fs::write(&cfg, toml).expect("write aggregator config");
        Self::start(&dir.join("data"), &["--config", &cfg.to_string_lossy()])
    }

    /// How many files of `host` hold exactly `lines` lines in their first generation.
    pub fn files_with_lines(&self, host: &str, lines: u64) -> usize {
        let v = get(&self.url(&format!("/store/files?host={}", enc(host)))).json();
        v["files"].as_array().map_or(0, |f| {
            f.iter()
                .filter(|f| f["generations"][0]["lines"] == lines)
                .count()
        })
    }

    /// `host:port` it listens on.
    pub fn addr(&self) -> &str {
        self.base
            .trim_start_matches("http://")
            .trim_start_matches("https://")
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base, path_and_query)
    }

    /// The bytes of `GET /store/log?host=&file=[&extra]`, or the status on failure.
    pub fn log(&self, host: &str, file: &str, extra: &str) -> Result<Vec<u8>, u16> {
        let url = format!(
            "{}/store/log?host={}&file={}{}",
            self.base,
            enc(host),
            enc(file),
            extra
        );
        let r = get(&url);
        if r.status == 200 {
            Ok(r.body)
        } else {
            Err(r.status)
        }
    }
}

/// Reads the child's stdout until a line starting with `prefix` appears; keeps draining
/// the rest in the background so the child never blocks on a full pipe.
fn read_listen_line(
    stdout: impl Read + Send + 'static,
    prefix: &'static str,
    timeout: Duration,
) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(rest) = line.strip_prefix(prefix) {
                    let _ = tx.send(rest.trim().to_owned());
                    sent = true;
                }
            }
        }
    });
    rx.recv_timeout(timeout).ok()
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> Answer {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| resp.header(&n).map(|v| (n.clone(), v.to_owned())))
        .collect();
    let mut body = Vec::new();
    resp.into_reader()
        .read_to_end(&mut body)
        .expect("read the response body");
    Answer {
        status,
        headers,
        body,
    }
}

pub fn get(url: &str) -> Answer {
    answer(agent().get(url).call())
}

pub fn get_with(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = agent().get(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    answer(req.call())
}

pub fn post(url: &str, body: &[u8], headers: &[(&str, &str)]) -> Answer {
    let mut req = agent().post(url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    answer(req.send_bytes(body))
}

/// Posts a compact batch of `lines` starting at `start`.
pub fn post_compact(
    agg: &Aggregator,
    host: &str,
    file: &str,
    generation: &str,
    start: u64,
    lines: &[&[u8]],
) -> Answer {
    let mut w = logship_wire::compact::Writer::new(host, file, generation, start);
    for l in lines {
        w.push(l, false);
    }
    post(
        &agg.url("/store/batch"),
        &w.finish(),
        &[("Content-Type", logship_wire::COMPACT_CONTENT_TYPE)],
    )
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    pub proc: Proc,
}

impl Agent {
    /// Starts `agent --config CONFIG`.
    pub fn start(config: &Path) -> Agent {
        Self::start_with_stdin(config, Stdio::null())
    }

    /// Starts `agent --config CONFIG` with `stdin` as its standard input (a file, or
    /// `Stdio::piped()` to write to `proc.child.stdin`).
    pub fn start_with_stdin(config: &Path, stdin: Stdio) -> Agent {
        let child = Command::new(bin("agent"))
            .stdin(stdin)
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn agent");
        Agent {
            proc: Proc {
                child,
                name: "agent",
            },
        }
    }
}

/// Writes `n` lines `"{prefix} line {i} …"` (of varied length) to `path`, appending.
pub fn append_lines(path: &Path, prefix: &str, range: std::ops::Range<usize>) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    let mut buf = Vec::new();
    for i in range {
        let pad = "x".repeat(i % 37);
        writeln!(buf, "{prefix} line {i} {pad}").expect("format");
    }
    f.write_all(&buf).expect("append");
}

/// Writes `agent.toml` in `dir` shipping `patterns` to `agg` as host `host`, with `extra`
/// TOML appended to the top level (before the tables) and `source_extra` inside the source.
pub fn agent_config(
    dir: &Path,
    url: &str,
    host: &str,
    patterns: &[&str],
    extra: &str,
    source_extra: &str,
) -> PathBuf {
    let paths: Vec<String> = patterns.iter().map(|p| format!("{p:?}")).collect();
    let text = format!(
        "host = {host:?}\nstate_dir = {:?}\npoll_interval = \"500ms\"\n{extra}\n[sink]\nurl = {url:?}\n\n[defaults]\nlinger = \"50ms\"\nretry = {{ initial = \"20ms\", max = \"300ms\" }}\n\n[[sources]]\npaths = [{}]\n{source_extra}\n",
        dir.join("state").to_string_lossy(),
        paths.join(", ")
    );
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).expect("write agent config");
    p
}

/// Writes `files` files `dir/logs/app{f}.log` of `lines` lines each (prefixed `f{f}`).
pub fn write_logs(dir: &Path, files: usize, lines: usize) -> Vec<PathBuf> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    (0..files)
        .map(|f| {
            let p = logs.join(format!("app{f}.log"));
            append_lines(&p, &format!("f{f}"), 0..lines);
            p
        })
        .collect()
}

/// Whether the aggregator serves `path` (as shipped by `host`) byte-identical to the file.
pub fn shipped_exactly(agg: &Aggregator, host: &str, path: &Path) -> bool {
    let want = std::fs::read(path).expect("read source file");
    agg.log(host, &path.to_string_lossy(), "")
        .is_ok_and(|got| got == want)
}

/// Waits up to `within` until every file downloads byte-identical as `host`, then checks
/// each is stored as one generation holding exactly the file's lines (nothing twice).
pub fn assert_all_shipped(agg: &Aggregator, host: &str, files: &[PathBuf], within: Duration) {
    let ok = wait_until(within, || {
        files.iter().all(|f| shipped_exactly(agg, host, f))
    });
    if !ok {
        for f in files {
            let got = agg.log(host, &f.to_string_lossy(), "").map(|b| b.len());
            let want = std::fs::metadata(f).map(|m| m.len());
            eprintln!("{}: downloaded {got:?}, file {want:?}", f.display());
        }
    }
    assert!(
        ok,
        "not every file of {host} downloaded byte-identical within {within:?}"
    );
    for f in files {
        let gens = generations(agg, host, &f.to_string_lossy());
        assert_eq!(
            gens.len(),
            1,
            "{}: one generation expected, got {gens:?}",
            f.display()
        );
        assert_eq!(
            gens[0].1,
            line_count(f),
            "{}: stored line count",
            f.display()
        );
    }
}

/// The generations listed for `host`/`file`: (name, lines).
pub fn generations(agg: &Aggregator, host: &str, file: &str) -> Vec<(String, u64)> {
    let v = get(&agg.url(&format!("/store/files?host={}", enc(host)))).json();
    v["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["file"] == file)
        .flat_map(|f| f["generations"].as_array().cloned().unwrap_or_default())
        .map(|g| {
            (
                g["generation"].as_str().unwrap_or_default().to_owned(),
                g["lines"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// Lines in a file.
pub fn line_count(path: &Path) -> u64 {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64)
}

/// An open `follow=true` download, read by a background thread into a buffer.
#[derive(Debug)]
pub struct Follower {
    pub received: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    pub status: u16,
}

impl Follower {
    /// Opens `url` (which should carry `follow=true`) and keeps reading it.
    pub fn open(url: &str) -> Follower {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(120))
            .build();
        Self::open_with(&agent, url)
    }

    /// As [`open`](Self::open), through `agent` (a TLS client, say).
    pub fn open_with(agent: &ureq::Agent, url: &str) -> Follower {
        let resp = match agent.get(url).call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("follow request failed: {e}"),
        };
        let status = resp.status();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            let mut reader = resp.into_reader();
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        });
        Follower { received, status }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().expect("lock")).into_owned()
    }
}

/// Starts an aggregator in `dir/data` and writes an agent config shipping `dir/logs/*.log`
/// as host `h` (with `top_extra` and `source_extra` TOML); returns it, the logs directory
/// and the config path.
pub fn start_pair(
    dir: &Path,
    top_extra: &str,
    source_extra: &str,
) -> (Aggregator, PathBuf, PathBuf) {
    start_pair_on(&Backend::Sled, dir, top_extra, source_extra)
}

/// As [`start_pair`], the aggregator on `backend`.
pub fn start_pair_on(
    backend: &Backend,
    dir: &Path,
    top_extra: &str,
    source_extra: &str,
) -> (Aggregator, PathBuf, PathBuf) {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let agg = match backend {
        Backend::Sled => Aggregator::start(&dir.join("data"), &[]),
        other => other.aggregator(dir, "", &[]),
    };
    let cfg = agent_config(
        dir,
        &agg.url("/store/batch"),
        "h",
        &[&format!("{}/*.log", logs.display())],
        top_extra,
        source_extra,
    );
    (agg, logs, cfg)
}

/// The sum of the values of the Prometheus lines starting with `name` (a metric, or a metric
/// and its labels); 0 if there are none.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| {
            l.split_whitespace()
                .last()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .sum()
}

/// The longest any one request (or response stream) kept an aggregator worker thread busy,
/// as the upper bound of the `aggregator_worker_busy_seconds` histogram bucket that holds
/// every observation (offloaded decoding is not counted).
pub fn worker_busy_bound(agg: &Aggregator) -> f64 {
    let m = get(&agg.url("/metrics")).text();
    let total = metric(&m, "aggregator_worker_busy_seconds_count");
    // No observation at all would make any bound pass: the histogram itself is broken.
    assert!(
        total > 0.0,
        "aggregator_worker_busy_seconds has no observations"
    );
    m.lines()
        .filter(|l| l.starts_with("aggregator_worker_busy_seconds_bucket{le=\""))
        .filter_map(|l| {
            let le = l.split('"').nth(1)?.parse::<f64>().ok()?;
            let n = l.split_whitespace().last()?.parse::<f64>().ok()?;
            Some((le, n))
        })
        .find(|&(_, n)| n >= total)
        .map_or(f64::INFINITY, |(le, _)| le)
}

/// Starts an agent shipping `logs/*.log` to `agg` as host `h`, its metrics listener on a free
/// port (`top_extra` TOML follows it at the top level, `source_extra` goes in the source);
/// returns the agent and the listener's address.
pub fn agent_with_metrics(
    dir: &Path,
    agg: &Aggregator,
    logs: &Path,
    top_extra: &str,
    source_extra: &str,
) -> (Agent, String) {
    let metrics = free_addr();
    let cfg = agent_config(
        dir,
        &agg.url("/store/batch"),
        "h",
        &[&format!("{}/*.log", logs.display())],
        &format!("metrics_listen = {metrics:?}\n{top_extra}"),
        source_extra,
    );
    (Agent::start(&cfg), metrics)
}

/// The sum of an agent metric (see [`metric`]) from its listener at `addr`; -1 when it does
/// not answer.
pub fn agent_metric(addr: &str, name: &str) -> f64 {
    ureq::get(&format!("http://{addr}/metrics"))
        .timeout(Duration::from_secs(5))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .map_or(-1.0, |t| metric(&t, name))
}

/// Test certificates, generated at test time: a CA, a server certificate for `localhost` and
/// 127.0.0.1, a client certificate, and the broken variants the TLS tests need.
#[derive(Debug)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// Writes into `dir`: `ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key`,
    /// `expired.pem`/`expired.key` (valid 2020–2021), `wrong-host.pem`/`wrong-host.key` (for
    /// other.example only), and `other-ca.pem` (a CA that signed nothing here).
    pub fn generate(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
        std::fs::create_dir_all(dir).expect("mkdir pki");
        let write =
            |name: &str, text: String| std::fs::write(dir.join(name), text).expect("write pem");
        let ca = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().expect("key");
            let cert = p.self_signed(&key).expect("self-signed");
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("logship test CA");
        write("ca.pem", ca_cert.pem());
        write("other-ca.pem", ca("some other CA").0.pem());
        let leaf = |name: &str, sans: &[&str], ip: bool, expired: bool, client: bool| {
            let mut p =
                CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .expect("params");
            if ip {
                p.subject_alt_names
                    .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
            }
            p.distinguished_name.push(DnType::CommonName, sans[0]);
            if expired {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            if client {
                p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            }
            let key = KeyPair::generate().expect("key");
            let cert = p.signed_by(&key, &ca_cert, &ca_key).expect("sign");
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        };
        leaf("server", &["localhost"], true, false, false);
        leaf("expired", &["localhost"], true, true, false);
        leaf("wrong-host", &["other.example"], false, false, false);
        leaf("client", &["agent"], false, false, true);
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    /// Path of one of the files, as a TOML string value.
    pub fn path(&self, name: &str) -> String {
        format!("{:?}", self.dir.join(name).to_string_lossy())
    }

    /// The aggregator's `[tls]` table serving `cert` (`server`, `expired`, `wrong-host`),
    /// requiring client certificates when `mutual`.
    pub fn server_toml(&self, cert: &str, mutual: bool) -> String {
        let mut t = format!(
            "[tls]\ncert_file = {}\nkey_file = {}\n",
            self.path(&format!("{cert}.pem")),
            self.path(&format!("{cert}.key"))
        );
        if mutual {
            t.push_str(&format!("client_ca_file = {}\n", self.path("ca.pem")));
        }
        t
    }

    /// A client trusting `ca.pem`, presenting `client.pem` when `mutual`.
    pub fn client(&self, mutual: bool) -> ureq::Agent {
        use rustls::pki_types::pem::PemObject;
        let read = |name: &str| std::fs::read(self.dir.join(name)).expect("read pem");
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&read("ca.pem")) {
            roots.add(c.expect("ca cert")).expect("add root");
        }
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
        let config = if mutual {
            let chain = rustls::pki_types::CertificateDer::pem_slice_iter(&read("client.pem"))
                .collect::<Result<Vec<_>, _>>()
                .expect("client chain");
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&read("client.key"))
                .expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        } else {
            builder.with_no_client_auth()
        };
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .tls_config(std::sync::Arc::new(config))
            .build()
    }
}

/// `GET url` with `client`.
pub fn get_via(client: &ureq::Agent, url: &str) -> Answer {
    answer(client.get(url).call())
}

/// `GET url` with `client`, or the transport error (a refused handshake) as text.
pub fn try_get_via(client: &ureq::Agent, url: &str) -> Result<Answer, String> {
    match client.get(url).call() {
        Ok(r) => Ok(answer(Ok(r))),
        Err(ureq::Error::Status(c, r)) => Ok(answer(Err(ureq::Error::Status(c, r)))),
        Err(e) => Err(e.to_string()),
    }
}

impl Agent {
    /// Starts `agent --config CONFIG` with extra environment variables, its stderr appended
    /// to `log` (read it with `std::fs::read_to_string`).
    pub fn start_logged(config: &Path, env: &[(&str, &str)], log: &Path) -> Agent {
        Agent::start_logged_with(Command::new(bin("agent")), config, env, log)
    }

    /// As [`start_logged`](Self::start_logged), as the user `nobody` (`setpriv`, from
    /// util-linux): for what root may read and an operator's agent may not.
    pub fn start_logged_as_nobody(config: &Path, log: &Path) -> Agent {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(bin("agent"));
        Agent::start_logged_with(cmd, config, &[], log)
    }

    fn start_logged_with(
        mut cmd: Command,
        config: &Path,
        env: &[(&str, &str)],
        log: &Path,
    ) -> Agent {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open agent log");
        let child = cmd
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn agent");
        Agent {
            proc: Proc {
                child,
                name: "agent",
            },
        }
    }
}

/// Runs a binary to completion with `args` and `env` (bounded by `timeout`): its exit code,
/// stdout and stderr.
pub fn run_bin(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> (i32, String, String) {
    let mut cmd = Command::new(bin(name));
    cmd.args(args).envs(env.iter().copied());
    run_command(cmd, timeout)
}

/// As [`run_bin`], as the user `nobody` (`setpriv`): for what root may do and an operator's
/// agent may not (read a `chmod 000` file, write a directory it does not own).
pub fn run_bin_as_nobody(name: &str, args: &[&str], timeout: Duration) -> (i32, String, String) {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin(name))
        .args(args);
    run_command(cmd, timeout)
}

/// Runs `cmd` to completion (bounded by `timeout`): its exit code, stdout and stderr.
pub fn run_command(mut cmd: Command, timeout: Duration) -> (i32, String, String) {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut proc = Proc { child, name: "run" };
    let status = proc
        .wait_exit(timeout)
        .unwrap_or_else(|| panic!("{what} did not finish within {timeout:?}"));
    (
        status.code().unwrap_or(-1),
        out_t.join().unwrap_or_default(),
        err_t.join().unwrap_or_default(),
    )
}

/// Accepts any server certificate: only for the tests that must look inside an aggregator
/// serving a broken one (expired, wrong name) to prove nothing was stored.
#[derive(Debug)]
struct AcceptAnything(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client that skips server verification (see [`AcceptAnything`]).
pub fn unverified_client() -> ureq::Agent {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .tls_config(std::sync::Arc::new(config))
        .build()
}

/// The Python of a virtual environment holding the third-party clients the push tests
/// drive (the OpenTelemetry SDK and its OTLP/HTTP exporter, python-logging-loki, protobuf,
/// python-snappy), pinned. Created on first use next to the binaries (`target/pyclients`),
/// from PyPI; a test that finds it complete reuses it.
pub fn python_clients() -> PathBuf {
    const PACKAGES: [&str; 5] = [
        "opentelemetry-sdk==1.45.2",
        "opentelemetry-exporter-otlp-proto-http==1.45.2",
        "python-logging-loki==0.3.1",
        "protobuf>=5,<8",
        "python-snappy==0.7.3",
    ];
    let dir = bin_dir().join("..").join("pyclients");
    let python = dir.join("bin").join("python");
    if dir.join(".complete").exists() {
        return python;
    }
    // Built under a name of its own and renamed into place, so tests that start together
    // never see a half-installed environment.
    let tmp = bin_dir()
        .join("..")
        .join(format!("pyclients.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed (the push tests need python3 with venv, and PyPI): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&tmp),
        "python3 -m venv",
    );
    run(
        Command::new(tmp.join("bin").join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--timeout",
                "60",
            ])
            .args(PACKAGES),
        "pip install of the client libraries",
    );
    std::fs::write(tmp.join(".complete"), PACKAGES.join("\n")).expect("mark complete");
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another test finished first; its copy is as good.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(
        dir.join(".complete").exists(),
        "no client environment at {}",
        dir.display()
    );
    python
}

/// Runs a Python script with the client environment's Python, within `timeout`; its
/// standard output, or a panic with its standard error.
pub fn run_python(script: &str, args: &[&str], timeout: Duration) -> String {
    let python = python_clients();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("client.py");
    std::fs::write(&path, script).expect("write script");
    let out_path = dir.path().join("out");
    let err_path = dir.path().join("err");
    let child = Command::new(python)
        .arg(&path)
        .args(args)
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("start python");
    let mut proc = Proc {
        child,
        name: "python",
    };
    let status = proc.wait_exit(timeout);
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => std::fs::read_to_string(&out_path).expect("stdout"),
        Some(s) => panic!("python client exited with {s}: {err}"),
        None => panic!("python client did not finish within {timeout:?}: {err}"),
    }
}

/// Python that defines `PushRequest`, Loki's push message, with the `protobuf` library: its
/// schema declared from the field names and numbers of Loki's `push.proto` (the file is not
/// copied here). The push tests' clients and receivers start with it.
pub const LOKI_PUSH_SCHEMA_PY: &str = r#"
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
F = descriptor_pb2.FieldDescriptorProto
ts_file = descriptor_pb2.FileDescriptorProto.FromString(timestamp_pb2.DESCRIPTOR.serialized_pb)
push = descriptor_pb2.FileDescriptorProto(name="loki_push.proto", package="logproto", syntax="proto3",
                                           dependency=["google/protobuf/timestamp.proto"])
def message(name, fields):
    m = push.message_type.add(name=name)
    for fname, num, ftype, label, tname in fields:
        f = m.field.add(name=fname, number=num, type=ftype, label=label)
        if tname:
            f.type_name = tname
message("PushRequest", [("streams", 1, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".logproto.StreamAdapter")])
message("StreamAdapter", [("labels", 1, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
                          ("entries", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".logproto.EntryAdapter"),
                          ("hash", 3, F.TYPE_UINT64, F.LABEL_OPTIONAL, None)])
message("LabelPairAdapter", [("name", 1, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
                             ("value", 2, F.TYPE_STRING, F.LABEL_OPTIONAL, None)])
message("EntryAdapter", [("timestamp", 1, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".google.protobuf.Timestamp"),
                         ("line", 2, F.TYPE_STRING, F.LABEL_OPTIONAL, None),
                         ("structuredMetadata", 3, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".logproto.LabelPairAdapter")])
pool = descriptor_pool.DescriptorPool()
pool.Add(ts_file)
pool.Add(push)
PushRequest = message_factory.GetMessageClass(pool.FindMessageTypeByName("logproto.PushRequest"))
"#;

/// Runs `agent --check-config` on a config of host `h`, a state directory in `dir`, an
/// aggregator sink nobody listens on, and `sources_toml`; its exit code, stdout and stderr.
pub fn check_agent_config(dir: &Path, sources_toml: &str) -> (Option<i32>, String) {
    let p = dir.join("check.toml");
    std::fs::write(
        &p,
        format!(
            "host = \"h\"\nstate_dir = {:?}\n[sink]\nurl = \"http://127.0.0.1:9/store/batch\"\n{sources_toml}",
            dir.join("state").to_string_lossy()
        ),
    )
    .expect("write config");
    let out = Command::new(bin("agent"))
        .args(["--config", &p.to_string_lossy(), "--check-config"])
        .output()
        .expect("run agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}
