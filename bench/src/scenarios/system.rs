//! `system`: files → agent → aggregator with durable acks.

use super::*;

/// Files → agent → aggregator on sled with durable acks (over HTTPS with `tls`, reported as
/// `system-tls`).
pub(super) async fn system(
    args: &Args,
    bins: &Path,
    dir: &Path,
    r: &mut Report,
    tls: Option<&crate::tls::BenchTls>,
) -> anyhow::Result<()> {
    let name = if tls.is_some() {
        "system-tls"
    } else {
        "system"
    };
    let (paths, bytes) = make_files(args, dir, args.files, args.lines)?;
    let config = aggregator_config(args, dir, tls, "")?;
    let (agg, base) = Measured::aggregator_with(bins, &dir.join("data"), config.as_deref())?;
    let want = (args.files * args.lines) as u64;
    let pattern = format!("{}/logs/*.log", dir.display());
    // The agent reaches an HTTPS aggregator by name, as the certificate says.
    let sink_url =
        format!("{base}/store/batch").replace("https://127.0.0.1:", "https://localhost:");
    let sink_extra = tls.map(|t| t.sink_keys()).unwrap_or_default();
    let cmd = agent_cmd_with(args, bins, dir, &sink_url, &pattern, &sink_extra)?;
    let c = client();
    let t = Instant::now();
    let agent = Measured::spawn(cmd)?;
    // The aggregator's RSS once half the lines are stored: what it grows by over the second
    // half says whether it is flat at steady state (a cache filling up stops growing; a
    // per-line cost does not).
    let mut rss_half = None;
    wait_for(Duration::from_secs(600), async || {
        let stored = total_lines(&c, &base, Some("bench")).await?;
        if rss_half.is_none() && stored >= want / 2 {
            rss_half = Some(agg.rss());
        }
        Ok(stored >= want)
    })
    .await?;
    let rss_end = agg.rss();
    let secs = t.elapsed().as_secs_f64();
    let (agent_cpu, agg_cpu) = (agent.cpu_secs(), agg.cpu_secs());
    for p in &paths {
        let (s, body) = get(
            &c,
            &format!("{base}/store/log?host=bench&file={}", p.display()),
        )
        .await?;
        if s != 200 || body != std::fs::read(p)? {
            bail!("{}: download differs from the file", p.display());
        }
    }
    let gb = bytes as f64 / 1e9;
    r.add(
        name,
        "lines/s (agent → aggregator, durable)",
        want as f64 / secs,
        "lines/s",
    );
    r.add(name, "MB/s", bytes as f64 / secs / 1e6, "MB/s");
    r.add(name, "agent CPU per GB", agent_cpu / gb, "s/GB");
    r.add(name, "aggregator CPU per GB", agg_cpu / gb, "s/GB");
    r.add(
        name,
        "agent peak RSS",
        agent.peak_rss() as f64 / 1048576.0,
        "MiB",
    );
    r.add(
        name,
        "aggregator peak RSS",
        agg.peak_rss() as f64 / 1048576.0,
        "MiB",
    );
    if let Some(half) = rss_half {
        r.add(
            name,
            "aggregator RSS growth over the second half",
            (rss_end as f64 - half as f64) / 1048576.0 / (gb / 2.0),
            "MiB/GB",
        );
    }
    if cluster().is_none() {
        r.add(
            name,
            "aggregator disk bytes per input byte",
            du(&dir.join("data")) as f64 / bytes as f64,
            "x",
        );
    }
    // The reference storage is compared with: each file compressed whole by zstd -3.
    let mut zstd = 0;
    for p in &paths {
        zstd += crate::corpus::zstd3_size(p)?;
    }
    r.add(
        name,
        "reference: zstd -3 of each file, bytes per input byte",
        zstd as f64 / bytes as f64,
        "x",
    );
    Ok(())
}
