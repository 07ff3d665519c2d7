//! `scaling` (with `--store redis`): the `ingest` load through 1, 2 and 3 ingest-role
//! aggregators sharing the cluster, checked through a query-role one; and the cluster's own
//! ceiling (`redis-benchmark`), which the redis rows are read against.

use super::*;

pub(super) async fn scaling(
    args: &Args,
    bins: &Path,
    dir: &Path,
    r: &mut Report,
) -> anyhow::Result<()> {
    let cluster = cluster().context("the scaling scenario needs --store redis")?;
    let (bodies, bytes) = ingest::bodies(args.ingest_lines, args.clients, args.seed);
    let lines = (args.ingest_lines / args.clients * args.clients) as u64;
    for n in 1..=3usize {
        cluster.flush_all();
        let sub = dir.join(format!("n{n}"));
        let mut nodes = Vec::new();
        for i in 0..n {
            let d = sub.join(format!("ingest-{i}"));
            std::fs::create_dir_all(&d)?;
            let cfg = aggregator_config(args, &d, None, "role = \"ingest\"")?;
            nodes.push(Measured::aggregator_with(
                bins,
                &d.join("data"),
                cfg.as_deref(),
            )?);
        }
        let q = sub.join("query");
        std::fs::create_dir_all(&q)?;
        let cfg = aggregator_config(args, &q, None, "role = \"query\"")?;
        let (_query, query_base) =
            Measured::aggregator_with(bins, &q.join("data"), cfg.as_deref())?;
        let cpu0: f64 = nodes.iter().map(|(m, _)| m.cpu_secs()).sum();
        let t = Instant::now();
        let bases: Vec<String> = nodes.iter().map(|(_, b)| b.clone()).collect();
        ingest::post_all(bodies.clone(), &bases).await?;
        let secs = t.elapsed().as_secs_f64();
        let cpu: f64 = nodes.iter().map(|(m, _)| m.cpu_secs()).sum::<f64>() - cpu0;
        let stored = total_lines(&client(), &query_base, Some("bench")).await?;
        if stored != lines {
            bail!("{n} ingest nodes stored {stored} lines of {lines}");
        }
        r.add(
            "scaling",
            format!("lines/s through {n} ingest aggregator(s)"),
            lines as f64 / secs,
            "lines/s",
        );
        r.add(
            "scaling",
            format!("aggregator CPU per GB, {n} node(s) together"),
            cpu / (bytes as f64 / 1e9),
            "s/GB",
        );
    }
    Ok(())
}

/// The cluster's own write ceiling: `redis-benchmark --cluster` pipelined `SET`s of one
/// bucket's size (128 lines of `line_bytes`), reported as lines/s.
pub(super) fn redis_ceiling(
    cluster: &logship_e2e::RedisCluster,
    line_bytes: f64,
) -> anyhow::Result<f64> {
    let port = *cluster
        .primaries()
        .first()
        .context("the cluster has no primary")?;
    let size = (line_bytes * 128.0) as usize + 17 + 256;
    let out = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "--cluster", "-t", "set", "-q"])
        .args(["-d", &size.to_string(), "-P", "16", "-c", "8"])
        .args(["-n", "20000", "-r", "100000"])
        .output()
        .context("running redis-benchmark (apt-get install redis-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    cluster.flush_all();
    // "SET: 12345.67 requests per second, p50=…": the last report line (it rewrites one
    // line with carriage returns while it runs).
    let rps = text
        .split(['\r', '\n'])
        .filter_map(|l| l.trim().strip_prefix("SET: "))
        .filter_map(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .next_back()
        .with_context(|| format!("no SET figure in redis-benchmark's output: {text}"))?;
    Ok(rps * 128.0)
}
