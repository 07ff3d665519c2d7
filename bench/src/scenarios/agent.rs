//! `agent`: files → agent → a discarding sink, beside `cat`; with `--sinks N`, the same files
//! to N sinks at once; with `--sink-down-secs S`, two sinks with one down.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::*;

/// Files → agent → a discarding sink in this process.
pub(super) async fn agent_alone(
    args: &Args,
    bins: &Path,
    dir: &Path,
    r: &mut Report,
) -> anyhow::Result<()> {
    let (paths, bytes) = make_files(args, dir, args.files, args.lines)?;
    let want = (args.files * args.lines) as u64;
    let pattern = format!("{}/logs/*.log", dir.display());
    let (addr, seen) = sink::start().await?;
    let cmd = agent_cmd(
        args,
        bins,
        dir,
        &format!("http://{addr}/store/batch"),
        &pattern,
    )?;
    let t = Instant::now();
    let agent = Measured::spawn(cmd)?;
    wait_for(Duration::from_secs(600), async || {
        Ok(seen.lock().map_or(0, |s| s.total_lines()) >= want)
    })
    .await?;
    let secs = t.elapsed().as_secs_f64();
    check_every_line(&seen, &paths, args.lines)?;
    let cpu = agent.cpu_secs();
    let one_sink = want as f64 / secs;
    r.add(
        "agent",
        "lines/s (to a discarding sink)",
        one_sink,
        "lines/s",
    );
    r.add("agent", "MB/s", bytes as f64 / secs / 1e6, "MB/s");
    r.add(
        "agent",
        "agent CPU per GB",
        cpu / (bytes as f64 / 1e9),
        "s/GB",
    );
    r.add(
        "agent",
        "agent peak RSS",
        agent.peak_rss() as f64 / 1048576.0,
        "MiB",
    );
    drop(agent);
    let t = Instant::now();
    for p in &paths {
        Command::new("cat")
            .arg(p)
            .stdout(std::process::Stdio::null())
            .status()?;
    }
    r.add(
        "agent",
        "reference: cat of the same files",
        bytes as f64 / t.elapsed().as_secs_f64() / 1e6,
        "MB/s",
    );
    let run = Shipped {
        args,
        bins,
        dir,
        pattern: &pattern,
        paths: &paths,
        one_sink,
    };
    if args.sinks > 1 {
        run.several_sinks(r).await?;
    }
    if args.sink_down_secs > 0 {
        run.one_sink_down(r).await?;
    }
    Ok(())
}

/// The one-sink run the several-sink runs are measured against: its files and lines/s.
struct Shipped<'a> {
    args: &'a Args,
    bins: &'a Path,
    dir: &'a Path,
    pattern: &'a str,
    paths: &'a [PathBuf],
    one_sink: f64,
}

impl Shipped<'_> {
    fn want(&self) -> u64 {
        (self.args.files * self.args.lines) as u64
    }

    /// Starts an agent shipping the files to every URL of `urls`, its state in `dir/name`.
    fn spawn(&self, name: &str, urls: &[String]) -> anyhow::Result<Measured> {
        let run = self.dir.join(name);
        std::fs::create_dir_all(&run)?;
        Measured::spawn(agent_cmd_sinks(
            self.args,
            self.bins,
            &run,
            urls,
            self.pattern,
        )?)
    }

    /// The same files to `--sinks` discarding sinks at once.
    async fn several_sinks(&self, r: &mut Report) -> anyhow::Result<()> {
        let (args, paths, one_sink, want) = (self.args, self.paths, self.one_sink, self.want());
        let mut sinks = Vec::new();
        for _ in 0..args.sinks {
            sinks.push(sink::start().await?);
        }
        let urls: Vec<String> = sinks
            .iter()
            .map(|(a, _)| format!("http://{a}/store/batch"))
            .collect();
        let t = Instant::now();
        let agent = self.spawn("several-sinks", &urls)?;
        wait_for(Duration::from_secs(600), async || {
            Ok(sinks
                .iter()
                .all(|(_, seen)| seen.lock().map_or(0, |s| s.total_lines()) >= want))
        })
        .await?;
        let rate = want as f64 / t.elapsed().as_secs_f64();
        let cpu = agent.cpu_secs();
        for (_, seen) in &sinks {
            check_every_line(seen, paths, args.lines)?;
        }
        let n = args.sinks;
        r.add(
            "agent",
            format!("lines/s with {n} sinks (every line to each)"),
            rate,
            "lines/s",
        );
        r.add(
            "agent",
            format!("{n} sinks ÷ 1 sink, lines/s"),
            100.0 * rate / one_sink,
            "%",
        );
        let bytes: u64 = paths
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        r.add(
            "agent",
            format!("agent CPU per GB delivered to each of {n} sinks"),
            cpu / (bytes as f64 * n as f64 / 1e9),
            "s/GB",
        );
        r.add(
            "agent",
            format!("agent peak RSS with {n} sinks"),
            agent.peak_rss() as f64 / 1048576.0,
            "MiB",
        );
        Ok(())
    }

    /// Two sinks, the second down: the first ships while it is; `--sink-down-secs` later the
    /// second comes up on the address the agent has been trying and must get every line once.
    async fn one_sink_down(&self, r: &mut Report) -> anyhow::Result<()> {
        let (args, paths, one_sink, want) = (self.args, self.paths, self.one_sink, self.want());
        let (up_addr, up) = sink::start().await?;
        // An address nothing listens on until the second sink starts there.
        let down_addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let urls = [
            format!("http://{up_addr}/store/batch"),
            format!("http://{down_addr}/store/batch"),
        ];
        let t = Instant::now();
        let agent = self.spawn("sink-down", &urls)?;
        wait_for(Duration::from_secs(600), async || {
            Ok(up.lock().map_or(0, |s| s.total_lines()) >= want)
        })
        .await?;
        let rate = want as f64 / t.elapsed().as_secs_f64();
        check_every_line(&up, paths, args.lines)?;
        tokio::time::sleep(Duration::from_secs(args.sink_down_secs)).await;
        let rss_down = agent.peak_rss() as f64 / 1048576.0;
        let t = Instant::now();
        let (_, back) = sink::start_on(down_addr).await?;
        // Its first delivery waits out the retry backoff reached while it was down (up to
        // `retry.max`), so this is the time to every line, not a rate.
        wait_for(Duration::from_secs(600), async || {
            Ok(back.lock().map_or(0, |s| s.total_lines()) >= want)
        })
        .await?;
        let catch_up = t.elapsed().as_secs_f64();
        check_every_line(&back, paths, args.lines)?;
        r.add(
            "agent",
            "one of 2 sinks down: the other's lines/s ÷ 1 sink",
            100.0 * rate / one_sink,
            "%",
        );
        r.add(
            "agent",
            "one of 2 sinks down: agent peak RSS (max_buffered_bytes 32 MiB)",
            rss_down,
            "MiB",
        );
        r.add(
            "agent",
            "the down sink back: seconds until it had every line, once (retry backoff included)",
            catch_up,
            "s",
        );
        Ok(())
    }
}

/// Every file reached the sink whole: each line once, its bytes exact.
fn check_every_line(
    seen: &Arc<Mutex<sink::Seen>>,
    paths: &[PathBuf],
    lines: usize,
) -> anyhow::Result<()> {
    let s = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    for p in paths {
        let (n, b) = s
            .files
            .get(&*p.to_string_lossy())
            .copied()
            .unwrap_or_default();
        let len = std::fs::metadata(p)?.len();
        if n != lines as u64 || b + n != len {
            bail!(
                "{}: sink saw {n} lines / {} bytes, file has {lines} / {len}",
                p.display(),
                b + n,
            );
        }
    }
    Ok(())
}
