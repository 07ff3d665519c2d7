//! `logship-bench`: measures the agent, the aggregator and the store the way an operator
//! would, on deterministic generated logs, and checks every result is complete and exact
//! before printing a figure. Prints a table; `--json FILE` writes the figures.
//!
//! Reference figures (`cat`, raw sled) are measured in the same run, so results read as
//! ratios on a shared, noisy machine.

mod corpus;
mod gen;
mod http;
mod proc;
mod report;
mod scenarios;
mod sink;
mod tls;

use std::path::PathBuf;

use clap::Parser;

/// Benchmarks for logship.
#[derive(Debug, Parser, Clone)]
#[command(version)]
pub struct Args {
    /// Scenarios to run, comma-separated: ingest, store, agent, system, download, idle,
    /// latency, fleet, search.
    #[arg(
        long,
        default_value = "ingest,store,agent,system,download,idle,latency,fleet,search,push"
    )]
    pub scenarios: String,
    /// Files generated for the agent and system scenarios.
    #[arg(long, default_value_t = 10)]
    pub files: usize,
    /// Lines per file (the default sends ~1.2 GB through the agent and system scenarios, to
    /// measure steady state rather than start-up).
    #[arg(long, default_value_t = 1_000_000)]
    pub lines: usize,
    /// Concurrent clients in the ingest scenario.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Lines posted in the ingest and store scenarios (~1.2 GB by default).
    #[arg(long, default_value_t = 10_000_000)]
    pub ingest_lines: usize,
    /// Size of the file downloaded in the download scenario, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub download_mib: usize,
    /// Quiet files watched in the idle scenario.
    #[arg(long, default_value_t = 1000)]
    pub idle_files: usize,
    /// Seconds the idle and latency scenarios last.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Lines per second appended in the latency scenario.
    #[arg(long, default_value_t = 10_000)]
    pub latency_rate: u64,
    /// Simulated agents in the fleet scenario, each with its own address and connection.
    #[arg(long, default_value_t = 500)]
    pub fleet_agents: usize,
    /// Lines per second all fleet agents send together.
    #[arg(long, default_value_t = 100_000)]
    pub fleet_rate: u64,
    /// Seconds the fleet scenario lasts.
    #[arg(long, default_value_t = 60)]
    pub fleet_seconds: u64,
    /// Lines in each fleet agent's batches, `MIN-MAX` (each batch picks a size in the range):
    /// the default is the target's shape; larger ones show what a longer `linger` saves.
    #[arg(long, default_value = "20-50", value_parser = parse_batch_range)]
    pub fleet_batch: std::ops::RangeInclusive<u32>,
    /// Files each fleet agent ships: a third load sends that many files' batches (each of
    /// `--fleet-batch` lines) joined in one multi-file request, as the agent joins them.
    #[arg(long, default_value_t = 4)]
    pub fleet_files: usize,
    /// MiB stored (across 100 files) for the search scenario.
    #[arg(long, default_value_t = 1024)]
    pub search_mib: usize,
    /// Seed of the generated lines.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The files of the agent, system and search scenarios: `synthetic` (one line shape with
    /// a random id and numbers on every line) or `realistic` (access, syslog, JSON, Java
    /// with stack traces and logfmt logs, which compress like real ones; `system` then also
    /// prints the zstd -3 reference).
    #[arg(long, default_value = "synthetic", value_parser = ["synthetic", "realistic"])]
    pub corpus: String,
    /// Directory of the agent and aggregator binaries [default: beside this program].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Extra TOML for the agent's `[sink]` table, e.g. `compression = "none"`.
    #[arg(long, default_value = "")]
    pub sink_extra: String,
    /// `agent`: also ship the same files to this many discarding sinks at once (`[[sinks]]`,
    /// each line to each) and report it as a share of one sink's lines/s.
    #[arg(long, default_value_t = 1)]
    pub sinks: usize,
    /// `agent`: also run two sinks with the second down: the first's lines/s beside one
    /// sink's and the agent's peak RSS while it is down, then the second comes up after this
    /// many more seconds and must get every line once (0: skip).
    #[arg(long, default_value_t = 0)]
    pub sink_down_secs: u64,
    /// Also run `ingest` and `system` over TLS (a CA and certificate generated for the run)
    /// and report the TLS throughput as a share of plaintext measured in the same run.
    #[arg(long)]
    pub tls: bool,
    /// The aggregator's store for `ingest`, `system`, `download` and `scaling`: `sled` or
    /// `redis` (a 3-primary, 3-replica Redis Cluster on loopback that the benchmark starts,
    /// AOF with fsync always; needs `redis-server`).
    #[arg(long, default_value = "sled")]
    pub store: String,
    /// With `--store redis`: replicas each write must reach before it is acknowledged.
    #[arg(long, default_value_t = 0)]
    pub wait_replicas: u32,
    /// The `[store]` TOML of the run (set from `--store`).
    #[arg(skip)]
    pub store_toml: String,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Tiny sizes, for the test suite: checks the command works, not the figures.
    #[arg(long)]
    pub quick: bool,
    /// `search` and `download`: seal everything into compressed blocks before measuring
    /// (`[store] seal_after = "1s"`, then wait until nothing waits to be sealed); needs an
    /// aggregator that seals.
    #[arg(long)]
    pub sealed: bool,
    /// Runs only the discarding sink, printing its URL (the fleet scenario's transport
    /// reference runs this program so).
    #[arg(long, hide = true)]
    pub serve_sink: bool,
}

/// The largest fleet batch `--fleet-batch` takes.
const MAX_FLEET_BATCH: u32 = 100_000;

/// `MIN-MAX` (or one number) as a range of batch sizes, 1 line at least.
fn parse_batch_range(s: &str) -> Result<std::ops::RangeInclusive<u32>, String> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let num = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("{v:?} is not a number of lines"))
    };
    let (lo, hi) = (num(lo)?, num(hi)?);
    if lo == 0 || lo > hi {
        return Err(format!("{s:?}: expected MIN-MAX with 1 <= MIN <= MAX"));
    }
    // The aggregator's default limit per request; 500 agents building larger batches at
    // once would also hold gigabytes here.
    if hi > MAX_FLEET_BATCH {
        return Err(format!(
            "{s:?}: at most {MAX_FLEET_BATCH} lines a request (the aggregator's default limit)"
        ));
    }
    Ok(lo..=hi)
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.serve_sink {
        return sink::serve();
    }
    if args.quick {
        args.files = 3;
        args.lines = 3000;
        args.clients = 2;
        args.ingest_lines = 20_000;
        args.download_mib = 4;
        args.idle_files = 20;
        args.seconds = 2;
        args.latency_rate = 500;
        args.fleet_agents = 20;
        args.fleet_rate = 2_000;
        args.fleet_seconds = 2;
        args.search_mib = 8;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(scenarios::run_all(&args))?;
    println!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_batch_range;

    #[test]
    fn batch_ranges_parse_and_bad_ones_say_why() {
        assert_eq!(parse_batch_range("20-50"), Ok(20..=50));
        assert_eq!(parse_batch_range("200"), Ok(200..=200));
        for bad in ["0-5", "50-20", "x-3", "-", "", "1-100001"] {
            let err = parse_batch_range(bad).expect_err(bad);
            assert!(!err.is_empty(), "{bad}: empty error");
        }
    }
}
