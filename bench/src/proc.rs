//! Child processes under measurement: CPU seconds and memory from `/proc`, killed on drop.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A measured child process.
pub struct Measured {
    pub child: Child,
    /// Highest RSS seen by the sampler, in bytes.
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Measured {
    /// Starts `cmd`, sampling its RSS every 20 ms (VmHWM is since start; sampling lets a
    /// scenario measure the peak of one phase).
    pub fn spawn(mut cmd: Command) -> anyhow::Result<Self> {
        cmd.stdin(Stdio::null()).stderr(Stdio::inherit());
        let child = cmd.spawn()?;
        let pid = child.id();
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let rss = logship_common::proc_status_kib(pid, "VmRSS:") * 1024;
                if rss == 0 {
                    break;
                }
                p.fetch_max(rss, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Ok(Measured { child, peak, stop })
    }

    /// Starts the aggregator on an ephemeral port; returns it and its base URL.
    pub fn aggregator(bin: &Path, data: &Path) -> anyhow::Result<(Self, String)> {
        Self::aggregator_with(bin, data, None)
    }

    /// As [`aggregator`](Self::aggregator), with a config file (the `[tls]` of a `--tls` run).
    pub fn aggregator_with(
        bin: &Path,
        data: &Path,
        config: Option<&Path>,
    ) -> anyhow::Result<(Self, String)> {
        let mut cmd = Command::new(bin.join("aggregator"));
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env("RUST_LOG", "warn");
        Self::listening(cmd, "aggregator listening on ")
    }

    /// The discarding sink in a process of its own (this program, `--serve-sink`), so its
    /// CPU can be measured apart from the load's: the HTTP transport's share of a scenario.
    pub fn sink() -> anyhow::Result<(Self, String)> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--serve-sink");
        Self::listening(cmd, crate::sink::LISTENING)
    }

    /// Starts `cmd` and waits for the line `prefix` + its base URL on its stdout.
    fn listening(mut cmd: Command, prefix: &'static str) -> anyhow::Result<(Self, String)> {
        cmd.stdout(Stdio::piped());
        let mut m = Self::spawn(cmd)?;
        let stdout = m
            .child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix(prefix) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow::anyhow!("{} did not start", prefix.trim()))?;
        Ok((m, url))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds so far.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid())
    }

    pub fn rss(&self) -> u64 {
        logship_common::proc_status_kib(self.pid(), "VmRSS:") * 1024
    }

    /// Highest sampled RSS since start or the last [`reset_peak`](Self::reset_peak).
    pub fn peak_rss(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(self.rss())
    }

    pub fn reset_peak(&self) {
        self.peak.store(self.rss(), Ordering::Relaxed);
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime of `pid`, in seconds (clock ticks of 1/100 s on Linux).
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
