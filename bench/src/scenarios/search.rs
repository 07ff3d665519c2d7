//! `search`: `GET /store/search` over ~1 GiB stored across 100 files — a rare literal, a
//! common literal and a regex with an alternation — beside `rg -c` (ripgrep) over the same
//! original files in the same run. Every search's match count must equal ripgrep's.

use super::*;

/// The searches of the realistic corpus (`--corpus realistic`): words its formats hold at
/// those rates (the synthetic queries would match nothing there).
const REALISTIC_QUERIES: &[(&str, &str, &[&str])] = &[
    (
        "rare literal",
        "q=kube-probe%2F1.28%22%20rt%3D1.99",
        &["-F", "kube-probe/1.28\" rt=1.99"],
    ),
    (
        "common literal (~1 % of lines)",
        "q=level%3Derror%20service%3Dpayments",
        &["-F", "level=error service=payments"],
    ),
    (
        "regex with an alternation",
        "regex=true&q=%28Accepted%20publickey%7CFailed%20password%29%20for%20%28root%7Cadmin%29%20from",
        &[r"(Accepted publickey|Failed password) for (root|admin) from"],
    ),
];

/// The searches: (name, query string for the aggregator, ripgrep arguments).
const QUERIES: &[(&str, &str, &[&str])] = &[
    ("rare literal", "q=req%3D00000", &["-F", "req=00000"]),
    (
        "common literal (~1 % of lines)",
        "q=ERROR%20%5Bworker-1%5D",
        &["-F", "ERROR [worker-1]"],
    ),
    (
        "regex with an alternation",
        "regex=true&q=%28PUT%7CDELETE%29%20%2Fhealthz%2F%5Cd%2B%20status%3D500%20bytes%3D2",
        &[r"(PUT|DELETE) /healthz/\d+ status=500 bytes=2"],
    ),
];

/// A limit no search here reaches.
const ALL: u64 = 100_000_000;

pub(super) async fn search(
    args: &Args,
    bins: &Path,
    dir: &Path,
    r: &mut Report,
) -> anyhow::Result<()> {
    if Command::new("rg").arg("--version").output().is_err() {
        bail!("the search scenario compares with ripgrep: install it (apt-get install ripgrep)");
    }
    let files = 100;
    let per_file = ((args.search_mib as u64) << 20) / 126 / files as u64;
    let (paths, bytes) = make_files(args, dir, files, per_file as usize)?;
    // Every match is counted against ripgrep's, however many a large corpus holds.
    let extra = format!("[search]\nmax_limit = {ALL}\n{}", sealed_toml(args));
    let config = aggregator_config(args, dir, None, &extra)?;
    let (agg, base) = Measured::aggregator_with(bins, &dir.join("data"), config.as_deref())?;
    // Store the same files: four clients posting 1,000-line batches.
    let mut tasks = Vec::new();
    for part in paths.chunks(files.div_ceil(4)) {
        let part = part.to_vec();
        let url = format!("{base}/store/batch");
        tasks.push(tokio::spawn(async move {
            let c = client();
            for p in part {
                let text = std::fs::read(&p)?;
                let name = p.to_string_lossy().into_owned();
                let lines: Vec<&[u8]> = text
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .collect();
                for (i, chunk) in lines.chunks(1000).enumerate() {
                    let mut w =
                        logship_wire::compact::Writer::new("bench", &name, "g", (i * 1000) as u64);
                    for l in chunk {
                        w.push(l, false);
                    }
                    let s = post(&c, &url, Bytes::from(w.finish())).await?;
                    if s != 200 {
                        bail!("storing the search corpus answered {s}");
                    }
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    wait_sealed(args, &base).await?;
    let c = client();
    let rss_before = agg.rss();
    agg.reset_peak();
    let queries = if args.corpus == "realistic" {
        REALISTIC_QUERIES
    } else {
        QUERIES
    };
    for (name, query, rg_args) in queries {
        let cpu0 = agg.cpu_secs();
        let t = Instant::now();
        let (status, body) = get(&c, &format!("{base}/store/search?{query}&limit={ALL}")).await?;
        let secs = t.elapsed().as_secs_f64();
        let cores = (agg.cpu_secs() - cpu0) / secs;
        if status != 200 {
            bail!(
                "search {name:?} answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let summary: serde_json::Value = body
            .split(|&b| b == b'\n')
            .rev()
            .find(|l| !l.is_empty())
            .map(serde_json::from_slice)
            .transpose()?
            .unwrap_or_default();
        let summary = &summary["summary"];
        let matches = summary["matches"].as_u64().unwrap_or(0);
        if summary["truncated"] != false {
            bail!("search {name:?} did not finish: {summary}");
        }
        let t = Instant::now();
        let out = Command::new("rg")
            .args(["-c", "--no-messages"])
            .args(*rg_args)
            .arg(dir.join("logs"))
            .output()?;
        let rg_secs = t.elapsed().as_secs_f64();
        let rg_matches: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.rsplit(':').next()?.parse::<u64>().ok())
            .sum();
        if matches != rg_matches {
            bail!("search {name:?} found {matches} lines, ripgrep {rg_matches}");
        }
        let rate = bytes as f64 / secs / 1e9;
        let rg_rate = bytes as f64 / rg_secs / 1e9;
        r.add(
            "search",
            format!("{name}: GB/s of stored content ({matches} matches)"),
            rate,
            "GB/s",
        );
        r.add(
            "search",
            format!("{name}: aggregator cores busy"),
            cores,
            "cores",
        );
        r.add(
            "search",
            format!("{name}: reference rg -c"),
            rg_rate,
            "GB/s",
        );
        r.add(
            "search",
            format!("{name}: share of ripgrep's rate"),
            rate / rg_rate * 100.0,
            "%",
        );
        let (loki_secs, search_secs) =
            loki_beside_search(&c, &base, query, rg_args, matches).await?;
        r.add(
            "search",
            format!("{name}: Loki query_range (limit 100, backward) ÷ the same /store/search (order=newest)"),
            loki_secs / search_secs,
            "x",
        );
    }
    r.add(
        "search",
        "aggregator RSS before the searches",
        rss_before as f64 / 1048576.0,
        "MiB",
    );
    r.add(
        "search",
        "aggregator peak RSS during the searches",
        agg.peak_rss() as f64 / 1048576.0,
        "MiB",
    );
    Ok(())
}

/// The same search as a Loki `query_range` (`{host="bench"}` and the pattern as a line
/// filter, the newest 100) and as `/store/search?order=newest&limit=100`: their times.
/// Both scan everything in the window; the Loki one resolves its selector first and
/// converts the results. Each must answer min(100, matches) lines.
async fn loki_beside_search(
    c: &crate::http::HttpClient,
    base: &str,
    query: &str,
    rg_args: &[&str],
    matches: u64,
) -> anyhow::Result<(f64, f64)> {
    let (op, pattern) = match rg_args {
        ["-F", lit] => ("|=", *lit),
        [re] => ("|~", *re),
        other => bail!("no LogQL form for {other:?}"),
    };
    if pattern.contains('`') {
        bail!("pattern {pattern:?} holds a backtick");
    }
    let logql = format!("{{host=\"bench\"}} {op} `{pattern}`");
    let encoded: String = logql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let want = matches.min(100);
    let t = Instant::now();
    let (status, body) = get(
        c,
        &format!("{base}/store/search?{query}&order=newest&limit=100"),
    )
    .await?;
    let search_secs = t.elapsed().as_secs_f64();
    let found = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && !l.starts_with(b"{\"summary\""))
        .count() as u64;
    if status != 200 || found != want {
        bail!("ordered search answered {status} with {found} lines, {want} expected");
    }
    let t = Instant::now();
    let (status, body) = get(
        c,
        &format!(
            "{base}/loki/api/v1/query_range?query={encoded}&limit=100&direction=backward&start=0"
        ),
    )
    .await?;
    let loki_secs = t.elapsed().as_secs_f64();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let found: u64 = v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["values"].as_array().map_or(0, |a| a.len() as u64))
        .sum();
    if status != 200 || found != want {
        bail!("Loki query_range answered {status} with {found} lines, {want} expected: {v}");
    }
    Ok((loki_secs, search_secs))
}
