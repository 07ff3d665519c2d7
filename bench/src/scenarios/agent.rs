//! `agent`: files → agent → a discarding sink, beside `cat`.

use super::*;

/// Files → agent → a discarding sink in this process.
pub(super) async fn agent_alone(
    args: &Args,
    bins: &Path,
    dir: &Path,
    r: &mut Report,
) -> anyhow::Result<()> {
    let (paths, bytes) = make_files(args, dir, args.files, args.lines)?;
    let (addr, seen) = sink::start().await?;
    let want = (args.files * args.lines) as u64;
    let pattern = format!("{}/logs/*.log", dir.display());
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
    {
        let s = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for p in &paths {
            let (n, b) = s
                .files
                .get(&*p.to_string_lossy())
                .copied()
                .unwrap_or_default();
            let len = std::fs::metadata(p)?.len();
            if n != args.lines as u64 || b + n != len {
                bail!(
                    "{}: sink saw {n} lines / {} bytes, file has {} / {len}",
                    p.display(),
                    b + n,
                    args.lines
                );
            }
        }
    }
    let cpu = agent.cpu_secs();
    r.add(
        "agent",
        "lines/s (to a discarding sink)",
        want as f64 / secs,
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
    Ok(())
}
