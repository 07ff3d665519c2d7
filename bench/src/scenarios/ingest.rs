//! `ingest`: concurrent clients posting compact batches to the real aggregator, beside raw
//! sled one record per line.

use super::*;

/// Compact bodies of 1,000 lines for `clients` files, `total` lines in all.
pub(super) fn bodies(total: usize, clients: usize, seed: u64) -> (Vec<Vec<Bytes>>, u64) {
    let per = total / clients;
    let mut bytes = 0;
    let out = (0..clients)
        .map(|c| {
            let lines = gen::lines(per, seed + c as u64);
            lines
                .chunks(1000)
                .enumerate()
                .map(|(i, chunk)| {
                    let mut w = logship_wire::compact::Writer::new(
                        "bench",
                        &format!("/bench/c{c}.log"),
                        "g",
                        (i * 1000) as u64,
                    );
                    for l in chunk {
                        w.push(l, false);
                        bytes += l.len() as u64 + 1;
                    }
                    Bytes::from(w.finish())
                })
                .collect()
        })
        .collect();
    (out, bytes)
}

/// Posts every client's bodies, one task per client, client `k` to `bases[k % n]`;
/// anything but a 200 fails the run.
pub(super) async fn post_all(bodies: Vec<Vec<Bytes>>, bases: &[String]) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for (k, list) in bodies.into_iter().enumerate() {
        let url = format!("{}/store/batch", bases[k % bases.len()]);
        tasks.push(tokio::spawn(async move {
            let c = client();
            for b in list {
                let s = post(&c, &url, b).await?;
                if s != 200 {
                    bail!("ingest answered {s}");
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Many concurrent clients posting compact batches of 1,000 lines to the real aggregator
/// (over HTTPS with `tls`, reported as `ingest-tls`).
pub(super) async fn ingest(
    args: &Args,
    bins: &Path,
    dir: &Path,
    r: &mut Report,
    tls: Option<&crate::tls::BenchTls>,
) -> anyhow::Result<()> {
    let name = if tls.is_some() {
        "ingest-tls"
    } else {
        "ingest"
    };
    let config = aggregator_config(args, dir, tls, "")?;
    let (agg, base) = Measured::aggregator_with(bins, &dir.join("data"), config.as_deref())?;
    let (bodies, bytes) = bodies(args.ingest_lines, args.clients, args.seed);
    let memory_before = cluster().map(|c| c.used_memory());
    let lines = (args.ingest_lines / args.clients * args.clients) as u64;
    let cpu0 = agg.cpu_secs();
    let t = Instant::now();
    post_all(bodies, std::slice::from_ref(&base)).await?;
    let secs = t.elapsed().as_secs_f64();
    let stored = total_lines(&client(), &base, Some("bench")).await?;
    if stored != lines {
        bail!("ingest stored {stored} lines of {lines}");
    }
    r.add(
        name,
        format!("lines/s ({} clients, durable acks)", args.clients),
        lines as f64 / secs,
        "lines/s",
    );
    r.add(name, "MB/s", bytes as f64 / secs / 1e6, "MB/s");
    r.add(
        name,
        "aggregator CPU per GB",
        (agg.cpu_secs() - cpu0) / (bytes as f64 / 1e9),
        "s/GB",
    );
    r.add(
        name,
        "aggregator peak RSS",
        agg.peak_rss() as f64 / 1048576.0,
        "MiB",
    );
    if tls.is_some() {
        return Ok(());
    }
    if let (Some(c), Some(before)) = (cluster(), memory_before) {
        let used = c.used_memory().saturating_sub(before);
        r.add(
            name,
            "redis memory per content byte (primaries, INFO memory)",
            used as f64 / bytes as f64,
            "x",
        );
        let ceiling = super::scaling::redis_ceiling(c, bytes as f64 / lines as f64)?;
        r.add(
            name,
            "reference: redis-benchmark SET of one bucket's size, pipelined, as lines/s",
            ceiling,
            "lines/s",
        );
        r.add(
            name,
            "ratio to the cluster's own ceiling",
            lines as f64 / secs / ceiling,
            "x",
        );
        return Ok(());
    }
    let raw = raw_sled_per_line(dir, args.ingest_lines.min(300_000), args.seed)?;
    r.add(
        name,
        "reference: raw sled, 1 record/line, flush/1000",
        raw,
        "lines/s",
    );
    r.add(
        name,
        "ratio to raw sled 1 record/line",
        lines as f64 / secs / raw,
        "x",
    );
    Ok(())
}

/// The one-record-per-line layout written straight to sled: `apply_batch` of 1,000 records
/// and a flush after each, as durable acks would need.
pub(super) fn raw_sled_per_line(dir: &Path, n: usize, seed: u64) -> anyhow::Result<f64> {
    let db = sled::Config::new()
        .path(dir.join("raw-sled"))
        .cache_capacity(64 << 20)
        .open()?;
    let lines = gen::lines(n, seed);
    let t = Instant::now();
    for (i, chunk) in lines.chunks(1000).enumerate() {
        let mut b = sled::Batch::default();
        for (j, l) in chunk.iter().enumerate() {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&1u64.to_be_bytes());
            k[8..].copy_from_slice(&((i * 1000 + j) as u64).to_be_bytes());
            b.insert(&k[..], l.as_slice());
        }
        db.apply_batch(b)?;
        db.flush()?;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    if db.len() != n {
        bail!("raw sled holds {} records of {n}", db.len());
    }
    Ok(rate)
}
