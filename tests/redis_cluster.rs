//! A real Redis Cluster on loopback for the redis store's tests: 3 primaries + 3 replicas
//! (Debian's `redis-server`, joined by `redis-cli --cluster create`), `appendonly yes`,
//! `appendfsync always`, each node in its own temp dir, all killed on drop. And
//! [`Backend`], which lets one test body run against sled and against the cluster.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::{wait_until, Aggregator, Proc};

/// One node: its port, data dir and process (none while stopped).
#[derive(Debug)]
struct Node {
    port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

/// A running cluster; every node is killed when it drops.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Mutex<Vec<Node>>,
    dir: tempfile::TempDir,
}

/// Six consecutive free ports whose cluster-bus ports (+10000) are free too, all below
/// Linux's ephemeral range (32768 on): a node restarted after an outage must find its ports
/// still free, and the bus ports used to fall in that range, where any client's outgoing
/// connection may take them meanwhile (the cluster then never came back).
fn free_ports() -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    for _ in 0..200 {
        let base = fastrand::u16(10_000..22_000);
        if (base..base + 6).all(|p| free(p) && free(p + 10_000)) {
            return base;
        }
    }
    panic!("no six free ports for a redis cluster");
}

fn spawn(port: u16, dir: &Path) -> Proc {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--protected-mode", "no", "--cluster-enabled", "yes"])
        .args(["--cluster-config-file", "nodes.conf"])
        .args(["--cluster-node-timeout", "2000"])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server (apt-get install redis-server)");
    Proc {
        child,
        name: "redis-server",
    }
}

/// `redis-cli -p PORT args…`, its stdout (empty if it failed).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl RedisCluster {
    /// Starts six nodes and joins them as 3 primaries with one replica each; returns once
    /// every node reports `cluster_state:ok` (30 s at most).
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = free_ports();
        let nodes: Vec<Node> = (base..base + 6)
            .map(|port| {
                let d = dir.path().join(port.to_string());
                std::fs::create_dir_all(&d).expect("mkdir");
                Node {
                    port,
                    proc: Some(spawn(port, &d)),
                    dir: d,
                }
            })
            .collect();
        for n in &nodes {
            assert!(
                wait_until(Duration::from_secs(10), || redis_cli(n.port, &["ping"])
                    .contains("PONG")),
                "redis-server on {} did not start",
                n.port
            );
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster {
            nodes: Mutex::new(nodes),
            dir,
        };
        assert!(
            cluster.wait_ok(Duration::from_secs(30)),
            "cluster never became ok"
        );
        cluster
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, Vec<Node>> {
        self.nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the nodes keep their data (AOF, cluster config).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Seed URLs of every node.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes()
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Ports of the nodes that are running.
    pub fn running(&self) -> Vec<u16> {
        self.nodes()
            .iter()
            .filter(|n| n.proc.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// Whether every running node says `cluster_state:ok` and sees three primaries up, and
    /// every primary has a replica online (so `WAIT 1` can succeed), polled until `timeout`.
    pub fn wait_ok(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.running().iter().all(|&p| {
                redis_cli(p, &["cluster", "info"]).contains("cluster_state:ok")
                    && self.primaries_seen_by(p).len() == 3
            }) && self.primaries().iter().all(|&p| {
                let r = redis_cli(p, &["info", "replication"]);
                r.contains("connected_slaves:1") && r.contains("state=online")
            })
        })
    }

    /// Ports of the primaries node `port` believes are up.
    fn primaries_seen_by(&self, port: u16) -> Vec<u16> {
        redis_cli(port, &["cluster", "nodes"])
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail") && l.contains("connected"))
            .filter(|l| l.split_whitespace().count() > 8)
            .filter_map(|l| {
                let addr = l.split_whitespace().nth(1)?;
                addr.split(['@', ':']).nth(1)?.parse().ok()
            })
            .collect()
    }

    /// Ports of the current primaries that own slots.
    pub fn primaries(&self) -> Vec<u16> {
        let running = self.running();
        running
            .first()
            .map(|&p| self.primaries_seen_by(p))
            .unwrap_or_default()
    }

    /// `kill -9` of one node.
    pub fn kill9(&self, port: u16) {
        if let Some(n) = self.nodes().iter_mut().find(|n| n.port == port) {
            if let Some(mut p) = n.proc.take() {
                p.kill9();
            }
        }
    }

    /// `kill -9` of every node.
    pub fn kill_all(&self) {
        for n in self.nodes().iter_mut() {
            if let Some(mut p) = n.proc.take() {
                p.kill9();
            }
        }
    }

    /// Restarts every stopped node from its own dir (cluster config and AOF).
    pub fn restart_stopped(&self) {
        for n in self.nodes().iter_mut() {
            if n.proc.is_none() {
                n.proc = Some(spawn(n.port, &n.dir));
            }
        }
    }

    /// Memory the primaries use (`used_memory`), summed.
    pub fn used_memory(&self) -> u64 {
        self.primaries()
            .iter()
            .map(|&p| {
                redis_cli(p, &["info", "memory"])
                    .lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Empties every primary (`FLUSHALL`; replicas follow) and rewrites every node's AOF,
    /// so its disk space comes back too.
    pub fn flush_all(&self) {
        for p in self.primaries() {
            redis_cli(p, &["flushall"]);
        }
        for p in self.running() {
            redis_cli(p, &["bgrewriteaof"]);
        }
    }

    /// Keys stored on the primaries (`DBSIZE`), summed.
    pub fn keys(&self) -> u64 {
        self.primaries()
            .iter()
            .map(|&p| redis_cli(p, &["dbsize"]).trim().parse::<u64>().unwrap_or(0))
            .sum()
    }

    /// The `[store]` table pointing at this cluster, with `wait_replicas`.
    pub fn store_toml(&self, wait_replicas: u32) -> String {
        let seeds: Vec<String> = self.seeds().iter().map(|s| format!("{s:?}")).collect();
        format!(
            "[store]\ntype = \"redis\"\nnodes = [{}]\nwait_replicas = {wait_replicas}\nwait_timeout = \"2s\"\ntimeout = \"3s\"\n",
            seeds.join(", ")
        )
    }
}

/// The store a test runs against.
#[derive(Debug)]
pub enum Backend {
    Sled,
    Redis(RedisCluster),
}

impl Backend {
    pub fn sled() -> Backend {
        Backend::Sled
    }

    /// A fresh cluster of its own.
    pub fn redis() -> Backend {
        Backend::Redis(RedisCluster::start())
    }

    /// The `[store]` table of this backend ("" for sled, the default).
    pub fn store_toml(&self) -> String {
        match self {
            Backend::Sled => String::new(),
            Backend::Redis(c) => c.store_toml(1),
        }
    }

    /// Starts an aggregator on this backend with `toml` (which must not have a `[store]`
    /// table) written to `dir/agg.toml`, plus `extra` flags; sled data goes to `dir/data`.
    pub fn aggregator(&self, dir: &Path, toml: &str, extra: &[&str]) -> Aggregator {
        let store = self.store_toml();
        std::fs::create_dir_all(dir).expect("mkdir");
        let cfg = dir.join("agg.toml");
        std::fs::write(&cfg, format!("{toml}\n{store}")).expect("write aggregator config");
        let mut args = vec!["--config", cfg.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        Aggregator::start(&dir.join("data"), &args)
    }
}

/// Runs a test body `fn(Backend)` twice, as `<name>::sled` and `<name>::redis`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sled() {
                super::$name($crate::Backend::sled());
            }
            #[test]
            fn redis() {
                super::$name($crate::Backend::redis());
            }
        }
    )*};
}
