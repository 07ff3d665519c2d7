//! `download`: one large file served back, beside `cat`.

use http_body_util::{BodyExt, Full};

use super::*;

/// `GET /store/log` of one large file beside `cat` of the same bytes.
pub(super) async fn download(
    args: &Args,
    bins: &Path,
    dir: &Path,
    r: &mut Report,
) -> anyhow::Result<()> {
    let config = aggregator_config(args, dir, None, sealed_toml(args))?;
    let (agg, base) = Measured::aggregator_with(bins, &dir.join("data"), config.as_deref())?;
    let target = (args.download_mib as u64) << 20;
    let src = dir.join("big.log");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&src)?);
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let (mut written, mut n) = (0u64, 0u64);
    let c = client();
    let url = format!("{base}/store/batch");
    let mut line = Vec::with_capacity(256);
    while written < target {
        let mut w = logship_wire::compact::Writer::new("bench", "/big.log", "g", n);
        for _ in 0..2000 {
            line.clear();
            gen::line(&mut rng, n, &mut line);
            std::io::Write::write_all(&mut f, &line)?;
            written += line.len() as u64;
            w.push(&line[..line.len() - 1], false);
            n += 1;
        }
        let s = post(&c, &url, Bytes::from(w.finish())).await?;
        if s != 200 {
            bail!("ingest answered {s}");
        }
    }
    std::io::Write::flush(&mut f)?;
    drop(f);
    wait_sealed(args, &base).await?;
    agg.reset_peak();
    let rss_before = agg.rss();
    let t = Instant::now();
    let req = hyper::Request::get(format!("{base}/store/log?host=bench&file=/big.log"))
        .body(Full::new(Bytes::new()))?;
    let mut body = c.request(req).await?.into_body();
    let (mut got, mut hash) = (0u64, xxhash_rust::xxh3::Xxh3::new());
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            got += data.len() as u64;
            hash.update(&data);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let expect = hash_file(&src)?;
    if got != written || (hash.digest(), got) != expect {
        bail!("download of {got} bytes differs from the {written}-byte source");
    }
    r.add(
        "download",
        format!("GET /store/log of {} MiB", args.download_mib),
        written as f64 / secs / 1e6,
        "MB/s",
    );
    r.add(
        "download",
        "aggregator RSS before",
        rss_before as f64 / 1048576.0,
        "MiB",
    );
    r.add(
        "download",
        "aggregator peak RSS during",
        agg.peak_rss() as f64 / 1048576.0,
        "MiB",
    );
    let t = Instant::now();
    Command::new("cat")
        .arg(&src)
        .stdout(std::process::Stdio::null())
        .status()?;
    r.add(
        "download",
        "reference: cat of the same bytes",
        written as f64 / t.elapsed().as_secs_f64() / 1e6,
        "MB/s",
    );
    Ok(())
}

fn hash_file(p: &Path) -> std::io::Result<(u64, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(p)?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((h.digest(), len));
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
}
