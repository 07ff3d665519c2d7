//! The scenarios, one file each; each checks that its result is complete and exact before
//! it reports. This file runs the ones asked for and holds what several share.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use bytes::Bytes;
use logship_store::{SledOptions, SledStore, Store};

use crate::http::{client, get, post, total_lines};
use crate::proc::Measured;
use crate::report::{machine, Report};
use crate::{gen, sink, Args};

mod agent;
mod download;
mod fleet;
mod idle;
mod ingest;
mod latency;
mod push;
mod scaling;
mod search;
mod store;
mod system;

/// The Redis Cluster of a `--store redis` run.
static CLUSTER: std::sync::OnceLock<logship_e2e::RedisCluster> = std::sync::OnceLock::new();

/// The run's cluster, when `--store redis`.
pub(super) fn cluster() -> Option<&'static logship_e2e::RedisCluster> {
    CLUSTER.get()
}

/// The aggregator config of a scenario: the TLS table of a `--tls` run and the `[store]`
/// table of a `--store redis` run, with `extra` top-level keys; `None` when all are empty.
pub(super) fn aggregator_config(
    args: &Args,
    dir: &Path,
    tls: Option<&crate::tls::BenchTls>,
    extra: &str,
) -> anyhow::Result<Option<PathBuf>> {
    let tls_toml = match tls {
        Some(t) => std::fs::read_to_string(t.aggregator_config(dir)?)?,
        None => String::new(),
    };
    if tls_toml.is_empty() && args.store_toml.is_empty() && extra.is_empty() {
        return Ok(None);
    }
    let p = dir.join(format!("aggregator-{}.toml", fastrand::u32(..)));
    std::fs::write(
        &p,
        format!(
            "{extra}
{tls_toml}
{}",
            args.store_toml
        ),
    )?;
    Ok(Some(p))
}

fn bin_dir(args: &Args) -> anyhow::Result<PathBuf> {
    match &args.bin_dir {
        Some(d) => Ok(d.clone()),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("no directory beside the benchmark")?
            .to_path_buf()),
    }
}

pub async fn run_all(args: &Args) -> anyhow::Result<Report> {
    let result = run_scenarios(args).await;
    // The cluster lives in a static, which is never dropped: stop it on every path.
    if let Some(c) = cluster() {
        c.kill_all();
        let _ = std::fs::remove_dir_all(c.data_dir());
    }
    result
}

async fn run_scenarios(args: &Args) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut args = args.clone();
    let args = &mut args;
    let bins = bin_dir(args)?;
    match args.store.as_str() {
        "sled" => {}
        "redis" => {
            for s in args.scenarios.split(',').map(str::trim) {
                if !matches!(s, "ingest" | "system" | "download" | "scaling") {
                    bail!("--store redis runs ingest, system, download and scaling, not {s:?}");
                }
            }
            eprintln!("starting a Redis Cluster (3 primaries + 3 replicas, AOF always)");
            let c = tokio::task::spawn_blocking(logship_e2e::RedisCluster::start).await?;
            args.store_toml = c.store_toml(args.wait_replicas);
            let _ = CLUSTER.set(c);
        }
        other => bail!("--store: unknown store {other:?} (sled or redis)"),
    }
    let args = &*args;
    for name in ["agent", "aggregator"] {
        if !bins.join(name).exists() {
            bail!(
                "{} not found; build with `cargo build --release --bins`",
                bins.join(name).display()
            );
        }
    }
    eprintln!(
        "logship-bench on {} (binaries from {})",
        machine(),
        bins.display()
    );
    let wanted: Vec<&str> = args.scenarios.split(',').map(str::trim).collect();
    let tmp = tempfile::tempdir()?;
    // One CA per run: the benchmark's client trusts it from its first use on.
    let mut tls = None;
    for s in &wanted {
        eprintln!("== {s}");
        let dir = tmp.path().join(s);
        std::fs::create_dir_all(&dir)?;
        match *s {
            "ingest" => ingest::ingest(args, &bins, &dir, &mut report, None).await?,
            "store" => store::store(args, &dir, &mut report).await?,
            "agent" => agent::agent_alone(args, &bins, &dir, &mut report).await?,
            "system" => system::system(args, &bins, &dir, &mut report, None).await?,
            "download" => download::download(args, &bins, &dir, &mut report).await?,
            "idle" => idle::idle(args, &bins, &dir, &mut report).await?,
            "latency" => latency::latency(args, &bins, &dir, &mut report).await?,
            "fleet" => fleet::fleet(args, &bins, &dir, &mut report).await?,
            "push" => push::push(args, &bins, &dir, &mut report).await?,
            "search" => search::search(args, &bins, &dir, &mut report).await?,
            "scaling" => scaling::scaling(args, &bins, &dir, &mut report).await?,
            other => bail!("unknown scenario {other:?}"),
        }
        // `--tls`: the same scenario again over HTTPS, and the ratio of the two.
        if args.tls && matches!(*s, "ingest" | "system") {
            let tls_dir = tmp.path().join(format!("{s}-tls"));
            std::fs::create_dir_all(&tls_dir)?;
            if tls.is_none() {
                tls = Some(crate::tls::BenchTls::generate(&tmp.path().join("pki"))?);
            }
            let tls = tls.as_ref().context("TLS material")?;
            eprintln!("== {s} over TLS");
            match *s {
                "ingest" => ingest::ingest(args, &bins, &tls_dir, &mut report, Some(tls)).await?,
                _ => system::system(args, &bins, &tls_dir, &mut report, Some(tls)).await?,
            }
            let first = |scenario: &str| {
                report
                    .rows
                    .iter()
                    .find(|r| r.scenario == scenario && r.metric.starts_with("lines/s"))
                    .map(|r| r.value)
            };
            let (plain, secure) = match *s {
                "ingest" => (first("ingest"), first("ingest-tls")),
                _ => (first("system"), first("system-tls")),
            };
            if let (Some(p), Some(t)) = (plain, secure) {
                let name = if *s == "ingest" {
                    "ingest-tls"
                } else {
                    "system-tls"
                };
                report.add(
                    name,
                    "TLS throughput / plaintext (same run)",
                    t / p * 100.0,
                    "%",
                );
            }
            let _ = std::fs::remove_dir_all(&tls_dir);
        }
        let _ = std::fs::remove_dir_all(&dir);
        if let Some(c) = cluster() {
            c.flush_all();
        }
    }
    Ok(report)
}

/// Generates the agent's input files; returns their paths and total bytes.
pub(super) fn make_files(
    args: &Args,
    dir: &Path,
    n: usize,
    lines: usize,
) -> anyhow::Result<(Vec<PathBuf>, u64)> {
    std::fs::create_dir_all(dir.join("logs"))?;
    let mut total = 0;
    let paths: Vec<PathBuf> = (0..n)
        .map(|i| dir.join(format!("logs/app-{i}.log")))
        .collect();
    for (i, p) in paths.iter().enumerate() {
        let seed = args.seed + i as u64;
        total += if args.corpus == "realistic" {
            crate::corpus::file(p, lines, seed, i)?
        } else {
            gen::file(p, lines, seed)?
        };
    }
    Ok((paths, total))
}

pub(super) fn agent_cmd(
    args: &Args,
    bins: &Path,
    dir: &Path,
    url: &str,
    pattern: &str,
) -> anyhow::Result<Command> {
    agent_cmd_with(args, bins, dir, url, pattern, "")
}

/// As [`agent_cmd`], with `sink_keys` added to `[sink]` (the CA of a `--tls` run).
pub(super) fn agent_cmd_with(
    args: &Args,
    bins: &Path,
    dir: &Path,
    url: &str,
    pattern: &str,
    sink_keys: &str,
) -> anyhow::Result<Command> {
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "host = \"bench\"\nstate_dir = {:?}\n[sink]\nurl = {url:?}\n{}\n{sink_keys}\n[[sources]]\npaths = [{pattern:?}]\n",
            dir.join("state").to_string_lossy(),
            args.sink_extra
        ),
    )?;
    let mut cmd = Command::new(bins.join("agent"));
    cmd.arg("--config").arg(cfg).env("RUST_LOG", "warn");
    Ok(cmd)
}

/// An agent shipping `pattern` to every URL of `urls`, one `[[sinks]]` entry each (named
/// `s0`, `s1`, …, with `--sink-extra`), its config and state in `dir`.
pub(super) fn agent_cmd_sinks(
    args: &Args,
    bins: &Path,
    dir: &Path,
    urls: &[String],
    pattern: &str,
) -> anyhow::Result<Command> {
    let cfg = dir.join("agent.toml");
    let sinks: String = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            format!(
                "[[sinks]]\nname = \"s{i}\"\nurl = {url:?}\n{}\n",
                args.sink_extra
            )
        })
        .collect();
    std::fs::write(
        &cfg,
        format!(
            "host = \"bench\"\nstate_dir = {:?}\n{sinks}\n[[sources]]\npaths = [{pattern:?}]\n",
            dir.join("state").to_string_lossy(),
        ),
    )?;
    let mut cmd = Command::new(bins.join("agent"));
    cmd.arg("--config").arg(cfg).env("RUST_LOG", "warn");
    Ok(cmd)
}

pub(super) async fn wait_for(
    deadline: Duration,
    mut done: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let t = Instant::now();
    while t.elapsed() < deadline {
        if done().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("not complete within {deadline:?}")
}

/// `aggregator_store_seal_waiting_bytes`, or `None` from an aggregator without sealing.
pub(super) async fn seal_waiting(
    c: &crate::http::HttpClient,
    base: &str,
) -> anyhow::Result<Option<f64>> {
    aggregator_metric(c, base, "aggregator_store_seal_waiting_bytes").await
}

/// The value of the aggregator's metric `name` (no labels), if it has it.
pub(super) async fn aggregator_metric(
    c: &crate::http::HttpClient,
    base: &str,
    name: &str,
) -> anyhow::Result<Option<f64>> {
    Ok(metric_value(&metrics_text(c, base).await?, name))
}

/// The aggregator's `/metrics` page.
pub(super) async fn metrics_text(
    c: &crate::http::HttpClient,
    base: &str,
) -> anyhow::Result<String> {
    let (status, body) = get(c, &format!("{base}/metrics")).await?;
    if status != 200 {
        bail!("GET /metrics answered {status}");
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The value of series `name` (a metric, with its labels if it has any) in a `/metrics` page.
pub(super) fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// With `--sealed`: the `[store]` key that seals a file's lines a second after its last
/// write.
pub(super) fn sealed_toml(args: &Args) -> &'static str {
    if args.sealed {
        "[store]\nseal_after = \"1s\"\n"
    } else {
        ""
    }
}

/// With `--sealed`: waits (3 min at most) until nothing waits to be sealed.
pub(super) async fn wait_sealed(args: &Args, base: &str) -> anyhow::Result<()> {
    if !args.sealed {
        return Ok(());
    }
    let c = client();
    wait_for(Duration::from_secs(180), async || {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match seal_waiting(&c, base).await? {
            Some(w) => Ok(w == 0.0),
            None => bail!(
                "--sealed: the aggregator does not seal (no aggregator_store_seal_waiting_bytes)"
            ),
        }
    })
    .await
}

pub(super) fn du(path: &Path) -> u64 {
    walk_size(path)
}

fn walk_size(p: &Path) -> u64 {
    match std::fs::read_dir(p) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| walk_size(&e.path()))
            .sum(),
        Err(_) => std::fs::metadata(p).map_or(0, |m| m.len()),
    }
}
