//! Issue 4: a model-based test of the tailer. Random sequences of write / partial write /
//! rotate (rename + create) / copytruncate / truncate / delete + recreate / agent restart
//! (SIGTERM or kill -9) run against the real binaries; a model says what every generation
//! must hold. Seeds come from `LOGSHIP_MODEL_SEEDS` (e.g. `1-40`), default five; a
//! failure names its seed and the operations that led to it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use logship_e2e::*;

#[derive(Debug, Clone, Copy)]
enum Op {
    Write(usize),
    Partial,
    Rotate,
    CopyTruncate,
    Truncate,
    DeleteRecreate,
    RestartTerm,
    RestartKill,
}

struct Model {
    path: PathBuf,
    /// Finished generations, oldest first (non-empty only).
    done: Vec<Vec<u8>>,
    /// The live generation's bytes.
    current: Vec<u8>,
    next_line: u64,
    rotations: u32,
}

impl Model {
    fn append(&mut self, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .expect("open");
        f.write_all(bytes).expect("append");
        self.current.extend_from_slice(bytes);
    }

    fn close_generation(&mut self) {
        if !self.current.is_empty() {
            self.done.push(std::mem::take(&mut self.current));
        }
    }

    fn expected(&self) -> Vec<Vec<u8>> {
        let mut v = self.done.clone();
        if !self.current.is_empty() {
            v.push(self.current.clone());
        }
        v
    }
}

fn stored(agg: &Aggregator, file: &str) -> Vec<Vec<u8>> {
    generations(agg, "h", file)
        .into_iter()
        .map(|(g, _)| {
            agg.log("h", file, &format!("&generation={}", enc(&g)))
                .unwrap_or_default()
        })
        .collect()
}

/// Waits until the store holds exactly what the model expects.
fn synced(agg: &Aggregator, m: &Model, within: Duration) -> bool {
    let file = m.path.to_string_lossy().into_owned();
    wait_until(within, || stored(agg, &file) == m.expected())
}

fn run_seed(seed: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (agg, logs, cfg) = start_pair(
        dir.path(),
        "checkpoint_interval = \"100ms\"",
        "partial_line_timeout = \"150ms\"\nrotate_wait = \"150ms\"",
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut m = Model {
        path: logs.join("m.log"),
        done: Vec::new(),
        current: Vec::new(),
        next_line: 0,
        rotations: 0,
    };
    let mut agent = Agent::start(&cfg);
    let mut log: Vec<Op> = Vec::new();
    for _ in 0..18 {
        let op = match rng.u8(0..100) {
            0..=44 => Op::Write(rng.usize(1..400)),
            45..=54 => Op::Partial,
            55..=64 => Op::Rotate,
            65..=72 => Op::CopyTruncate,
            73..=78 => Op::Truncate,
            79..=84 => Op::DeleteRecreate,
            85..=92 => Op::RestartTerm,
            _ => Op::RestartKill,
        };
        log.push(op);
        let ctx = || format!("seed {seed}, operations {log:?}");
        match op {
            Op::Write(n) => {
                let mut buf = Vec::new();
                for _ in 0..n {
                    writeln!(
                        buf,
                        "seed {seed} line {} {}",
                        m.next_line,
                        "p".repeat((m.next_line % 40) as usize)
                    )
                    .expect("fmt");
                    m.next_line += 1;
                }
                m.append(&buf);
            }
            Op::Partial => {
                let s = format!("seed {seed} partial {} ", m.next_line);
                m.next_line += 1;
                m.append(s.as_bytes());
            }
            Op::Rotate | Op::CopyTruncate => {
                // The store orders generations by first arrival: let the live one arrive
                // before its successor can.
                assert!(
                    synced(&agg, &m, Duration::from_secs(20)),
                    "not synced before rotation: {}",
                    ctx()
                );
                m.rotations += 1;
                let to = logs.join(format!("m.log.{}", m.rotations));
                if matches!(op, Op::Rotate) {
                    if m.path.exists() {
                        std::fs::rename(&m.path, &to).expect("rename");
                    }
                    std::fs::write(&m.path, b"").expect("create");
                } else if m.path.exists() {
                    std::fs::copy(&m.path, &to).expect("copy");
                    std::fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(&m.path)
                        .expect("truncate");
                }
                m.close_generation();
            }
            Op::Truncate | Op::DeleteRecreate => {
                // Without a copy, only what was shipped before can survive: ship first.
                assert!(
                    synced(&agg, &m, Duration::from_secs(20)),
                    "not synced before truncation: {}",
                    ctx()
                );
                if matches!(op, Op::Truncate) {
                    if m.path.exists() {
                        std::fs::OpenOptions::new()
                            .write(true)
                            .truncate(true)
                            .open(&m.path)
                            .expect("truncate");
                    }
                } else {
                    let _ = std::fs::remove_file(&m.path);
                    std::fs::write(&m.path, b"").expect("recreate");
                }
                m.close_generation();
            }
            Op::RestartTerm => {
                // A just-started agent handles TERM once its handler is installed.
                assert!(
                    agent.proc.wait_catches(15, Duration::from_secs(10)),
                    "the agent never installed its SIGTERM handler"
                );
                agent.proc.signal("TERM");
                assert!(
                    agent
                        .proc
                        .wait_exit(Duration::from_secs(20))
                        .is_some_and(|s| s.success()),
                    "{}",
                    ctx()
                );
                agent = Agent::start(&cfg);
            }
            Op::RestartKill => {
                // Let the latest positions reach the checkpoint file, as time would.
                std::thread::sleep(Duration::from_millis(250));
                agent.proc.kill9();
                agent = Agent::start(&cfg);
            }
        }
        std::thread::sleep(Duration::from_millis(rng.u64(0..60)));
    }
    let ok = synced(&agg, &m, Duration::from_secs(30));
    let file = m.path.to_string_lossy().into_owned();
    if !ok {
        let got: Vec<usize> = stored(&agg, &file).iter().map(Vec::len).collect();
        let want: Vec<usize> = m.expected().iter().map(Vec::len).collect();
        panic!("seed {seed}: stored generation sizes {got:?}, model {want:?}; operations {log:?}");
    }
    drop(agent);
    let _ = Path::new(&file);
}

fn seeds() -> Vec<u64> {
    match std::env::var("LOGSHIP_MODEL_SEEDS") {
        // A typo must not run zero seeds and pass.
        Ok(s) => {
            let bad = || panic!("LOGSHIP_MODEL_SEEDS={s:?}: write seeds as 1-40 or 1,5,9");
            let seed = |x: &str| x.trim().parse::<u64>().unwrap_or_else(|_| bad());
            let seeds: Vec<u64> = match s.split_once('-') {
                Some((a, b)) => (seed(a)..=seed(b)).collect(),
                None => s.split(',').map(seed).collect(),
            };
            if seeds.is_empty() {
                bad();
            }
            seeds
        }
        Err(_) => vec![1, 2, 3, 4, 5],
    }
}

#[test]
fn tailer_matches_the_model_for_random_file_lifecycles() {
    for seed in seeds() {
        eprintln!("model seed {seed}");
        run_seed(seed);
    }
}
