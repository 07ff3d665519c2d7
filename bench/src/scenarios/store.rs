//! `store`: the aggregator's storage layer written directly.

use super::ingest::{bodies, raw_sled_per_line};
use super::*;

/// The aggregator's storage layer written directly (no HTTP), durable writes.
pub(super) async fn store(args: &Args, dir: &Path, r: &mut Report) -> anyhow::Result<()> {
    let store = Arc::new(SledStore::open(
        &dir.join("store"),
        &SledOptions::default(),
    )?);
    let (bodies, bytes) = bodies(args.ingest_lines, args.clients, args.seed);
    let lines = (args.ingest_lines / args.clients * args.clients) as u64;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for list in bodies {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for b in list {
                let fb = logship_wire::compact::decode(&b)?;
                store.write(std::slice::from_ref(&fb)).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    let files = store.files(Some("bench")).await?;
    let stored: u64 = files
        .iter()
        .flat_map(|f| &f.generations)
        .map(|g| g.lines)
        .sum();
    if stored != lines {
        bail!("store holds {stored} lines of {lines}");
    }
    r.add(
        "store",
        "SledStore lines/s (buckets, group commit)",
        lines as f64 / secs,
        "lines/s",
    );
    r.add("store", "SledStore MB/s", bytes as f64 / secs / 1e6, "MB/s");
    let raw = raw_sled_per_line(dir, args.ingest_lines.min(300_000), args.seed)?;
    r.add(
        "store",
        "reference: raw sled, 1 record/line",
        raw,
        "lines/s",
    );
    r.add(
        "store",
        "ratio to raw sled 1 record/line",
        lines as f64 / secs / raw,
        "x",
    );
    Ok(())
}
