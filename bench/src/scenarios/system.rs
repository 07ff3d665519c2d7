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
    // Sweeps every 5 s, so that the space sealing frees is back within the run (the
    // default, 1 min, only delays it).
    let sweep = if args.store_toml.is_empty() {
        "[store]\nsweep_interval = \"5s\"\n"
    } else {
        ""
    };
    let config = aggregator_config(args, dir, tls, sweep)?;
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
    // The most raw bytes waiting to be sealed at any moment of the ingest (read once a
    // second): over the ingest rate, how far sealing lags behind.
    let mut waiting_peak: Option<f64> = None;
    let mut polled = Instant::now();
    wait_for(Duration::from_secs(600), async || {
        let stored = total_lines(&c, &base, Some("bench")).await?;
        if rss_half.is_none() && stored >= want / 2 {
            rss_half = Some(agg.rss());
        }
        if polled.elapsed() >= Duration::from_secs(1) {
            polled = Instant::now();
            if let Some(w) = seal_waiting(&c, &base).await? {
                waiting_peak = Some(waiting_peak.unwrap_or(0f64).max(w));
            }
        }
        Ok(stored >= want)
    })
    .await?;
    let rss_end = agg.rss();
    let secs = t.elapsed().as_secs_f64();
    let (agent_cpu, agg_cpu) = (agent.cpu_secs(), agg.cpu_secs());
    // Before the downloads, whose CPU would count as sealing's.
    // (Not in a quick run: the last lines wait for `seal_after`, 30 s, of quiet.)
    let sealed_after = match waiting_peak {
        Some(_) if !args.quick => Some(sealing_done(name, &c, &base, &agg, r).await?),
        _ => None,
    };
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
    // How many lines a request carried: what joining many files' batches buys.
    let text = super::metrics_text(&c, &base).await?;
    let requests: f64 = text
        .lines()
        .filter(|l| l.starts_with("aggregator_http_requests_total{"))
        .filter(|l| l.contains("route=\"batch\"") && l.contains("code=\"200\""))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    if requests > 0.0 {
        r.add(name, "lines per request", want as f64 / requests, "lines");
    }
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
    if let Some(peak) = waiting_peak {
        r.add(
            name,
            "sealing lag: most raw bytes waiting ÷ ingest bytes per second",
            peak / (bytes as f64 / secs),
            "s",
        );
    }
    if let Some((after, cpu)) = sealed_after {
        let gb = bytes as f64 / 1e9;
        r.add(name, "everything sealed, after the ingest", after, "s");
        r.add(
            name,
            "aggregator CPU per GB, sealing included",
            cpu / gb,
            "s/GB",
        );
        settled_disk(name, dir, bytes, r).await;
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

/// Once the ingest is done: how long until everything is sealed (the files' last lines wait
/// for `seal_after` of quiet) and the aggregator's CPU seconds by then, sealing included.
async fn sealing_done(
    name: &'static str,
    c: &crate::http::HttpClient,
    base: &str,
    agg: &Measured,
    r: &mut Report,
) -> anyhow::Result<(f64, f64)> {
    let t = Instant::now();
    let mut last = Instant::now();
    wait_for(Duration::from_secs(180), async || {
        if last.elapsed() < Duration::from_millis(500) {
            return Ok(false);
        }
        last = Instant::now();
        Ok(seal_waiting(c, base).await? == Some(0.0))
    })
    .await?;
    let done = (t.elapsed().as_secs_f64(), agg.cpu_secs());
    let m = async |n| {
        aggregator_metric(c, base, n)
            .await
            .map(Option::unwrap_or_default)
    };
    let raw = m("aggregator_store_sealed_raw_bytes_total").await?;
    let stored = m("aggregator_store_sealed_stored_bytes_total").await?;
    if raw > 0.0 {
        r.add(
            name,
            "sealed blocks: bytes stored ÷ raw bucket bytes",
            stored / raw,
            "x",
        );
    }
    Ok(done)
}

/// The disk once the sweeps have given back what sealing freed (unchanged for 15 s), and
/// how it divides between the index and the segments.
async fn settled_disk(name: &'static str, dir: &Path, bytes: u64, r: &mut Report) {
    let data = dir.join("data");
    let (mut size, mut since) = (du(&data), Instant::now());
    let t = Instant::now();
    while since.elapsed() < Duration::from_secs(15) && t.elapsed() < Duration::from_secs(180) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = du(&data);
        if now != size {
            (size, since) = (now, Instant::now());
        }
    }
    r.add(
        name,
        "aggregator disk bytes per input byte, sealed and swept",
        size as f64 / bytes as f64,
        "x",
    );
    r.add(
        name,
        "  of which the index",
        du(&data.join("index")) as f64 / bytes as f64,
        "x",
    );
}
