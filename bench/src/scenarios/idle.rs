//! `idle`: quiet files watched.

use super::*;

/// Quiet files watched: the agent's CPU and memory while nothing happens.
pub(super) async fn idle(
    args: &Args,
    bins: &Path,
    dir: &Path,
    r: &mut Report,
) -> anyhow::Result<()> {
    let (_, _) = make_files(args, dir, args.idle_files, 5)?;
    let (addr, seen) = sink::start().await?;
    let pattern = format!("{}/logs/*.log", dir.display());
    let cmd = agent_cmd(
        args,
        bins,
        dir,
        &format!("http://{addr}/store/batch"),
        &pattern,
    )?;
    let agent = Measured::spawn(cmd)?;
    let want = (args.idle_files * 5) as u64;
    wait_for(Duration::from_secs(120), async || {
        Ok(seen.lock().map_or(0, |s| s.total_lines()) >= want)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu0 = agent.cpu_secs();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let cpu = agent.cpu_secs() - cpu0;
    r.add(
        "idle",
        format!(
            "agent CPU, {} quiet files, {} s",
            args.idle_files, args.seconds
        ),
        cpu / t.elapsed().as_secs_f64() * 100.0,
        "% core",
    );
    let rss = agent.rss() as f64;
    r.add("idle", "agent RSS", rss / 1048576.0, "MiB");
    // The memory target is 64 MiB + 4 KiB per watched file (issue 11.11).
    r.add(
        "idle",
        "agent RSS beyond 64 MiB, per watched file",
        (rss - 64.0 * 1048576.0).max(0.0) / args.idle_files.max(1) as f64 / 1024.0,
        "KiB",
    );
    Ok(())
}
