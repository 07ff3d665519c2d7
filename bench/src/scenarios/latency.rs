//! `latency`: steady appends, time until visible.

use super::*;

/// Lines appended at a steady rate; time from append to visible in the aggregator.
pub(super) async fn latency(
    args: &Args,
    bins: &Path,
    dir: &Path,
    r: &mut Report,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("logs"))?;
    let path = dir.join("logs/steady.log");
    std::fs::write(&path, b"")?;
    let (_agg, base) = Measured::aggregator(bins, &dir.join("data"))?;
    let pattern = format!("{}/logs/*.log", dir.display());
    let cmd = agent_cmd(args, bins, dir, &format!("{base}/store/batch"), &pattern)?;
    let _agent = Measured::spawn(cmd)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = (args.latency_rate * args.seconds) as usize;
    let rate = args.latency_rate;
    let p2 = path.clone();
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<Vec<Duration>> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(p2)?;
        let mut written_at = Vec::with_capacity(total);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut buf = Vec::new();
        while written_at.len() < total {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as usize;
            let due = due.min(total);
            buf.clear();
            let now = start.elapsed();
            while written_at.len() < due {
                gen::line(&mut rng, written_at.len() as u64, &mut buf);
                written_at.push(now);
            }
            f.write_all(&buf)?;
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(written_at)
    });
    let c = client();
    let file = path.to_string_lossy().into_owned();
    let mut visible_at: Vec<Duration> = Vec::with_capacity(total);
    let deadline = Instant::now() + Duration::from_secs(args.seconds + 30);
    while visible_at.len() < total && Instant::now() < deadline {
        let (s, body) = get(&c, &format!("{base}/store/files?host=bench")).await?;
        if s == 200 {
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            let n = v["files"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| f["file"] == file.as_str())
                .flat_map(|f| f["generations"].as_array().cloned().unwrap_or_default())
                .map(|g| g["lines"].as_u64().unwrap_or(0))
                .sum::<u64>() as usize;
            let now = start.elapsed();
            while visible_at.len() < n.min(total) {
                visible_at.push(now);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let written_at = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    if visible_at.len() < total {
        bail!("only {} of {total} lines became visible", visible_at.len());
    }
    let (s, body) = get(&c, &format!("{base}/store/log?host=bench&file={file}")).await?;
    if s != 200 || body != std::fs::read(&path)? {
        bail!("latency file downloads differently from its source");
    }
    let mut lat: Vec<f64> = visible_at
        .iter()
        .zip(&written_at)
        .map(|(v, w)| v.saturating_sub(*w).as_secs_f64() * 1000.0)
        .collect();
    let slow: Vec<usize> = lat
        .iter()
        .enumerate()
        .filter(|(_, l)| **l > 1000.0)
        .map(|(i, _)| i)
        .collect();
    if let (Some(a), Some(b)) = (slow.first(), slow.last()) {
        eprintln!(
            "  lines slower than 1 s: {} (indexes {a}..={b} of {})",
            slow.len(),
            lat.len()
        );
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    r.add(
        "latency",
        format!("append → visible p50 ({} lines/s, linger 200ms)", rate),
        pct(0.5),
        "ms",
    );
    r.add("latency", "append → visible p99", pct(0.99), "ms");
    r.add("latency", "append → visible max", pct(1.0), "ms");
    Ok(())
}
