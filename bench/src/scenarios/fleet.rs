//! `fleet`: a fleet of small agents fanning in. Each simulated agent has its own client
//! address on loopback (127.0.x.y) and one keep-alive connection, and posts batches of 20–50
//! lines (`--fleet-batch`) so that all together send a steady `--fleet-rate` lines/s. Beside
//! it, in the same run and for as long (a shorter reference varied by ±15 % between runs), the
//! same rate in batches of 1,000 lines from four clients: the aggregator's CPU per line should
//! stay within 2× of that, acknowledgements fast (group commit must share each
//! fsync between connections), and no connection refused. Every line is checked stored.
//! Then the same fleet with each agent shipping `--fleet-files` files whose batches it joins
//! into one multi-file request (issue 35: the agents coalesce), each line with its time.
//! Last, the same fleet against a bare hyper server (the discarding sink in a process of its
//! own): the transport's share of the fleet's cost, which no store design removes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::proc::Measured;
use crate::report::Report;
use crate::Args;

/// Less CPU than this (a few of /proc's 10 ms ticks) gives no meaningful ratio.
const MEASURABLE_CPU_SECS: f64 = 0.05;

/// What one load produced.
struct Load {
    lines: u64,
    cpu_secs: f64,
    /// Group commits the aggregator ran during the load.
    commits: u64,
    /// Segment bytes the aggregator appended, and line bytes it received, during the load.
    appended: u64,
    received: u64,
    latencies: Vec<Duration>,
    refused: u64,
}

pub(super) async fn fleet(
    args: &Args,
    bins: &Path,
    dir: &Path,
    r: &mut Report,
) -> anyhow::Result<()> {
    let (agg, base) = Measured::aggregator(bins, &dir.join("data"))?;
    let addr: SocketAddr = base
        .trim_start_matches("http://")
        .parse()
        .context("aggregator address")?;
    let rate = args.fleet_rate;
    let secs = args.fleet_seconds;
    let reference = load(addr, 4, rate, 1000..=1000, 1, secs, &agg, "ref").await?;
    let sizes = args.fleet_batch.clone();
    let fleet = load(
        addr,
        args.fleet_agents,
        rate,
        sizes.clone(),
        1,
        secs,
        &agg,
        "fleet",
    )
    .await?;
    // Each agent ships several files and joins their batches into one request.
    let files = args.fleet_files.max(1);
    let joined = load(
        addr,
        args.fleet_agents,
        rate,
        sizes.clone(),
        files,
        secs,
        &agg,
        "joined",
    )
    .await?;
    // The same fleet against a bare hyper server that only decodes and answers: what the
    // HTTP transport itself costs per line (epoll, reads, response writes over loopback),
    // which no store design removes.
    let transport = {
        let (sink, sink_base) = Measured::sink()?;
        let to: SocketAddr = sink_base
            .trim_start_matches("http://")
            .parse()
            .context("sink address")?;
        load(
            to,
            args.fleet_agents,
            rate,
            sizes.clone(),
            1,
            secs,
            &sink,
            "bare",
        )
        .await?
    };
    for (what, l) in [
        ("fleet", &fleet),
        ("joined", &joined),
        ("reference", &reference),
    ] {
        r.add(
            "fleet",
            format!("{what}: group commits per second"),
            l.commits as f64 / secs.max(1) as f64,
            "/s",
        );
        // Small batches used to rewrite each 128-line bucket ~4 times as it filled.
        r.add(
            "fleet",
            format!("{what}: segment bytes appended per byte received"),
            l.appended as f64 / l.received.max(1) as f64,
            "x",
        );
    }
    let stored = crate::http::total_lines(&crate::http::client(), &base, None).await?;
    let sent = reference.lines + fleet.lines + joined.lines;
    if stored != sent {
        bail!("fleet stored {stored} lines of {sent}");
    }
    let per_line = |l: &Load| l.cpu_secs / l.lines.max(1) as f64 * 1e6;
    let pct_of = |l: &Load, p: f64| {
        let mut lat = l.latencies.clone();
        lat.sort_unstable();
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let pct = |p: f64| pct_of(&fleet, p);
    let n = args.fleet_agents;
    let shape = format!("{}-{}", sizes.start(), sizes.end());
    r.add(
        "fleet",
        format!("{n} agents, batches of {shape}: lines/s"),
        fleet.lines as f64 / secs as f64,
        "lines/s",
    );
    r.add(
        "fleet",
        format!("aggregator CPU per line, {shape}-line batches"),
        per_line(&fleet),
        "µs",
    );
    r.add(
        "fleet",
        "reference: CPU per line, 1,000-line batches",
        per_line(&reference),
        "µs",
    );
    r.add(
        "fleet",
        "transport: bare hyper sink, same requests: CPU per line",
        per_line(&transport),
        "µs",
    );
    // /proc counts CPU in 10 ms ticks: a `--quick` reference uses too few for a ratio.
    if reference.cpu_secs >= MEASURABLE_CPU_SECS {
        r.add(
            "fleet",
            "ratio (target ≤ 2)",
            per_line(&fleet) / per_line(&reference).max(1e-9),
            "x",
        );
        r.add(
            "fleet",
            "ratio beyond the transport ((fleet - transport) / reference)",
            (per_line(&fleet) - per_line(&transport)) / per_line(&reference).max(1e-9),
            "x",
        );
        // The ratio if storing 35-line requests cost per line what 1,000-line ones do, on
        // top of the bare transport: small requests cost the store at least that per line,
        // so with this transport and this reference the ratio cannot go below it.
        r.add(
            "fleet",
            "ratio floor ((transport + reference) / reference)",
            (per_line(&transport) + per_line(&reference)) / per_line(&reference).max(1e-9),
            "x",
        );
    }
    let joined_shape = format!("{n} agents × {files} files joined, batches of {shape}");
    r.add(
        "fleet",
        format!("{joined_shape}: aggregator CPU per line"),
        per_line(&joined),
        "µs",
    );
    if reference.cpu_secs >= MEASURABLE_CPU_SECS {
        r.add(
            "fleet",
            format!("{joined_shape}: ratio to the reference (target ≤ 2)"),
            per_line(&joined) / per_line(&reference).max(1e-9),
            "x",
        );
    }
    r.add(
        "fleet",
        format!("{joined_shape}: ack latency p99 (target ≤ 50)"),
        pct_of(&joined, 0.99),
        "ms",
    );
    r.add("fleet", "ack latency p50", pct(0.50), "ms");
    r.add("fleet", "ack latency p99 (target ≤ 50)", pct(0.99), "ms");
    r.add("fleet", "ack latency max", pct(1.0), "ms");
    r.add(
        "fleet",
        "requests refused or failed",
        (fleet.refused + joined.refused + reference.refused + transport.refused) as f64,
        "",
    );
    r.add(
        "fleet",
        "aggregator peak RSS",
        agg.peak_rss() as f64 / 1048576.0,
        "MiB",
    );
    Ok(())
}

/// A distinct loopback source address per simulated agent (never 127.0.0.1).
fn source(i: usize) -> SocketAddr {
    let (hi, lo) = ((i / 250) as u8, (i % 250) as u8);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 1 + hi, 0, 1 + lo)), 0)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(i: usize, to: SocketAddr) -> anyhow::Result<Sender> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(source(i))?;
    let stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// `clients` connections sending `rate` lines/s in all, in batches of `sizes` lines, for
/// `secs` seconds; each client is its own host. With `files` > 1 each request joins a batch
/// of each of the client's files (the multi-file form, each line with its time).
#[allow(clippy::too_many_arguments)]
async fn load(
    to: SocketAddr,
    clients: usize,
    rate: u64,
    sizes: RangeInclusive<u32>,
    files: usize,
    secs: u64,
    agg: &Measured,
    tag: &'static str,
) -> anyhow::Result<Load> {
    let base = format!("http://{to}");
    // Only the aggregator has group commits to count.
    let aggregator = tag != "bare";
    let before = if aggregator {
        counters(&base).await?
    } else {
        Counters::default()
    };
    let cpu0 = agg.cpu_secs();
    let per_client = rate as f64 / clients.max(1) as f64;
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let sizes = sizes.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(i as u64);
            let host = format!("{tag}-{i}");
            let (mut lines, mut refused, mut latencies) = (0u64, 0u64, Vec::new());
            // Lines of each file sent so far (each file's next line number).
            let mut next = vec![0u64; files];
            let mut sender = connect(i, to).await?;
            // Spread the clients' first batches over the first second.
            let mut due = start + Duration::from_secs_f64(rng.f64());
            while due < end {
                tokio::time::sleep_until(due).await;
                let counts: Vec<u32> = (0..files).map(|_| rng.u32(sizes.clone())).collect();
                let n: u32 = counts.iter().sum();
                let body = if files == 1 {
                    let mut w = logship_wire::compact::Writer::new(&host, "/f", "g", lines);
                    for k in 0..n {
                        let line =
                            format!("{tag} {i} line {} {}", lines + u64::from(k), "x".repeat(60));
                        w.push(line.as_bytes(), false);
                    }
                    w.finish()
                } else {
                    let ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    let sections: Vec<Vec<u8>> = counts
                        .iter()
                        .enumerate()
                        .map(|(f, &c)| {
                            let file = format!("/f{f}");
                            let mut w =
                                logship_wire::multi::Writer::new(&host, &file, "g", next[f], ms);
                            for k in 0..u64::from(c) {
                                let line = format!(
                                    "{tag} {i} {file} line {} {}",
                                    next[f] + k,
                                    "x".repeat(60)
                                );
                                w.push(line.as_bytes(), false, ms);
                            }
                            w.finish()
                        })
                        .collect();
                    logship_wire::multi::join(&host, sections.iter().map(|s| &s[..]))
                };
                let req = hyper::Request::post("/store/batch")
                    .header("host", "bench")
                    .header("content-type", logship_wire::COMPACT_CONTENT_TYPE)
                    .body(Full::new(Bytes::from(body)))?;
                let sent = Instant::now();
                let ok = match sender.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let _ = resp.into_body().collect().await;
                        status == 200
                    }
                    Err(_) => false,
                };
                if ok {
                    latencies.push(sent.elapsed());
                    lines += u64::from(n);
                    for (f, c) in counts.iter().enumerate() {
                        next[f] += u64::from(*c);
                    }
                } else {
                    refused += 1;
                    sender = connect(i, to).await?;
                }
                due += Duration::from_secs_f64(f64::from(n) / per_client);
            }
            Ok::<_, anyhow::Error>((lines, refused, latencies))
        }));
    }
    let mut out = Load {
        lines: 0,
        cpu_secs: 0.0,
        commits: 0,
        appended: 0,
        received: 0,
        latencies: Vec::new(),
        refused: 0,
    };
    for t in tasks {
        let (lines, refused, latencies) = t.await??;
        out.lines += lines;
        out.refused += refused;
        out.latencies.extend(latencies);
    }
    out.cpu_secs = agg.cpu_secs() - cpu0;
    if aggregator {
        let after = counters(&base).await?;
        out.commits = after.commits.saturating_sub(before.commits);
        out.appended = after.appended.saturating_sub(before.appended);
        out.received = after.received.saturating_sub(before.received);
    }
    Ok(out)
}

/// The aggregator's counters a load reports, read from `/metrics` (a series that has not
/// appeared yet counts 0).
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    /// Group commits (each times its fsync once).
    commits: u64,
    /// Bytes appended to the segment files.
    appended: u64,
    /// Line bytes received.
    received: u64,
}

async fn counters(base: &str) -> anyhow::Result<Counters> {
    let text = super::metrics_text(&crate::http::client(), base).await?;
    let value = |name: &str| super::metric_value(&text, name).unwrap_or(0.0) as u64;
    Ok(Counters {
        commits: value("aggregator_store_commit_phase_seconds_count{phase=\"segments_fsync\"}"),
        appended: value("aggregator_store_segment_appended_bytes_total"),
        received: value("aggregator_bytes_received_total"),
    })
}
