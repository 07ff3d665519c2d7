//! Issue 29.4: an aggregator in the agent's URL list that accepts connections and never
//! answers must not stall the files: the healthy endpoint carries the load.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logship_e2e::*;

/// A listener that accepts every connection and never reads or answers, until `stop`.
struct BlackHole {
    url: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BlackHole {
    fn open() -> BlackHole {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}/store/batch", l.local_addr().expect("addr"));
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => held.push(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        BlackHole {
            url,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn agent_config(dir: &Path, urls: &[String], logs: &Path, metrics: &str) -> std::path::PathBuf {
    let list: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    // The sink's timeout is the default (30 s): what a hung endpoint costs a batch.
    let text = format!(
        "host = \"h\"\nmetrics_listen = {metrics:?}\nstate_dir = {:?}\npoll_interval = \"500ms\"\n[sink]\nurl = [{}]\n\n[defaults]\nlinger = \"50ms\"\n\n[[sources]]\npaths = [{:?}]\n",
        dir.join("state").to_string_lossy(),
        list.join(", "),
        format!("{}/*.log", logs.display()),
    );
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).expect("write agent config");
    p
}

#[test]
fn a_hung_endpoint_in_the_list_does_not_hold_the_files_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let hole = BlackHole::open();
    const FILES: usize = 4;
    const LINES: usize = 150;
    {
        // The hung endpoint first, so the first batches go there.
        let metrics = free_addr();
        let urls = [hole.url.clone(), agg.url("/store/batch")];
        let cfg = agent_config(dir.path(), &urls, &logs, &metrics);
        let _agent = Agent::start(&cfg);
        // Each file gets a line every 100 ms for 15 s; lag is the time from a line's write
        // to the first poll that finds it stored.
        let mut files: Vec<std::fs::File> = (0..FILES)
            .map(|f| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(logs.join(format!("f{f}.log")))
                    .expect("open")
            })
            .collect();
        let mut written: Vec<Instant> = Vec::new();
        let mut lags: Vec<Duration> = Vec::new();
        let stored = |f: usize| {
            get(&agg.url(&format!(
                "/store/files?host=h&file={}",
                enc(&format!("{}/f{f}.log", logs.display()))
            )))
            .json()["files"][0]["generations"][0]["lines"]
                .as_u64()
                .unwrap_or(0) as usize
        };
        let mut seen = [0usize; FILES];
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.iter().any(|&n| n < LINES) && Instant::now() < deadline {
            if written.len() < LINES {
                for (f, file) in files.iter_mut().enumerate() {
                    writeln!(file, "f{f} line {}", written.len()).expect("append");
                }
                written.push(Instant::now());
            }
            for (f, n) in seen.iter_mut().enumerate() {
                let now = stored(f);
                while *n < now.min(written.len()) {
                    lags.push(Instant::now().duration_since(written[*n]));
                    *n += 1;
                }
            }
            // Pacing the writer (a line per file every 100 ms), not synchronising.
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(seen, [LINES; FILES], "not every line arrived within 60 s");
        lags.sort();
        let p99 = lags[lags.len() * 99 / 100];
        let worst = lags[lags.len() - 1];
        eprintln!("lag with one of two endpoints hung: p99 {p99:?}, worst {worst:?}");
        assert!(
            p99 <= Duration::from_secs(2),
            "p99 lag {p99:?} (worst {worst:?}) with one of two endpoints hung"
        );
        for f in 0..FILES {
            let want: String = (0..LINES).map(|i| format!("f{f} line {i}\n")).collect();
            let path = format!("{}/f{f}.log", logs.display());
            assert_eq!(agg.log("h", &path, "").map(String::from_utf8), Ok(Ok(want)));
        }
        assert!(
            agent_metric(
                &metrics,
                &format!(
                    "agent_endpoint_requests_total{{endpoint=\"{}\",outcome=\"hedged\"}}",
                    hole.url
                )
            ) >= 1.0,
            "no request to the hung endpoint was hedged"
        );
    }
}
