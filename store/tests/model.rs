//! A model test of the `Store` trait, run the same way on both backends (sled in a temporary
//! directory; Redis as a real `redis-server` on an ephemeral port): random writes, resends
//! that rewrite lines (last write wins), partial lines later completed, several hosts, files
//! and generations, and sweeps that keep everything — and after every step the listings,
//! downloads (gapped, contiguous, numbered) and search chunks must equal what a plain map of
//! lines says. Before this the Redis backend was tested only through whole processes.
//!
//! Seeds come from `LOGSHIP_STORE_MODEL_SEEDS` (`3` or `1-40`; default `1-6`); a failure
//! names its seed and step. Unparsable seeds fail the test rather than run nothing.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use logship_store::{
    Chunk, RedisOptions, RedisStore, RetentionPolicy, SledOptions, SledStore, Store,
};
use logship_wire::{FileBatch, Line};

/// (host, file, generation) → line number → (content, partial).
type Model = BTreeMap<(String, String, String), BTreeMap<u64, (Vec<u8>, bool)>>;

const HOSTS: [&str; 2] = ["web-1", "db.example.org"];
const FILES: [&str; 3] = [
    "/var/log/nginx/access.log",
    "/var/log/syslog",
    "app {1}.log",
];
const GENERATIONS: [&str; 2] = ["g-1", "g-2"];

fn seeds() -> Vec<u64> {
    let spec = std::env::var("LOGSHIP_STORE_MODEL_SEEDS").unwrap_or_else(|_| "1-6".into());
    let parse = |s: &str| {
        s.trim()
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("LOGSHIP_STORE_MODEL_SEEDS={spec:?}: {e}"))
    };
    let seeds: Vec<u64> = match spec.split_once('-') {
        Some((a, b)) => (parse(a)..=parse(b)).collect(),
        None => vec![parse(&spec)],
    };
    assert!(
        !seeds.is_empty(),
        "LOGSHIP_STORE_MODEL_SEEDS={spec:?} names no seed"
    );
    seeds
}

/// A line's bytes: mostly log-like text, sometimes bytes that are not UTF-8, `\r`, or empty.
fn content(rng: &mut fastrand::Rng, n: u64, round: usize) -> Vec<u8> {
    match rng.u8(0..10) {
        0 => Vec::new(),
        1 => (0..rng.usize(1..40)).map(|_| rng.u8(..)).filter(|b| *b != b'\n').collect(),
        2 => format!("line {n}\r").into_bytes(),
        _ => format!(
            "10.0.{}.{} - - [07/Dec/2026:18:{:02}:{:02} +0000] \"GET /api/v1/items/{} HTTP/1.1\" {} {} round={round}",
            rng.u8(..),
            rng.u8(..),
            rng.u8(0..60),
            rng.u8(0..60),
            rng.u32(..),
            [200, 200, 304, 404, 500][rng.usize(0..5)],
            rng.u16(..),
        )
        .into_bytes(),
    }
}

/// One request: 1–3 file batches of consecutive lines, sometimes rewriting lines already
/// stored, sometimes ending with a partial line, sometimes crossing a 128-line bucket edge.
fn request(rng: &mut fastrand::Rng, model: &Model, round: usize) -> Vec<FileBatch<'static>> {
    (0..rng.usize(1..=3))
        .map(|_| {
            let key = (
                HOSTS[rng.usize(0..HOSTS.len())].to_owned(),
                FILES[rng.usize(0..FILES.len())].to_owned(),
                GENERATIONS[rng.usize(0..GENERATIONS.len())].to_owned(),
            );
            let end = model
                .get(&key)
                .and_then(|m| m.keys().next_back().copied())
                .map_or(0, |l| l + 1);
            let start = match rng.u8(0..4) {
                0 => end.saturating_sub(rng.u64(0..=end.min(40))), // a resend
                1 => end + rng.u64(0..200),                        // a gap
                _ => end,
            };
            let count = rng.u64(1..150);
            let partial_last = rng.u8(0..4) == 0;
            let lines = (start..start + count)
                .map(|n| Line {
                    number: n,
                    content: Cow::Owned(content(rng, n, round)),
                    partial: partial_last && n == start + count - 1,
                    ts: None,
                })
                .collect();
            FileBatch {
                host: Cow::Owned(key.0),
                file: Cow::Owned(key.1),
                generation: Cow::Owned(key.2),
                lines,
            }
        })
        .collect()
}

fn apply(model: &mut Model, batches: &[FileBatch<'_>]) {
    for b in batches {
        let lines = model
            .entry((
                b.host.to_string(),
                b.file.to_string(),
                b.generation.to_string(),
            ))
            .or_default();
        for l in &b.lines {
            lines.insert(l.number, (l.content.to_vec(), l.partial));
        }
    }
}

/// What a download of `lines` from 0 renders: every line, then `\n` unless partial.
fn rendered(lines: &BTreeMap<u64, (Vec<u8>, bool)>, contiguous: bool) -> (Vec<u8>, Vec<u64>) {
    let (mut data, mut numbers) = (Vec::new(), Vec::new());
    for (expect, (n, (content, partial))) in lines.iter().enumerate() {
        if contiguous && (*n != expect as u64 || *partial) {
            break;
        }
        data.extend_from_slice(content);
        if !partial {
            data.push(b'\n');
        }
        numbers.push(*n);
    }
    (data, numbers)
}

/// Reads a whole generation chunk by chunk (small chunks, so continuation is exercised).
async fn download(
    store: &dyn Store,
    id: u64,
    to: u64,
    contiguous: bool,
    search: bool,
) -> (Vec<u8>, Vec<u64>) {
    let (mut data, mut numbers) = (Vec::new(), Vec::new());
    let mut from = 0;
    for _ in 0..100_000 {
        let chunk: Chunk = if search {
            store.search_chunk(id, from, 4096, None).await
        } else {
            store.read_chunk(id, from, to, 4096, contiguous, true).await
        }
        .expect("reading a chunk");
        let base = data.len();
        data.extend_from_slice(&chunk.data);
        numbers.extend(chunk.lines.iter().map(|l| l.number));
        assert!(
            chunk.lines.iter().all(|l| l.start <= chunk.data.len()),
            "line start past its chunk at {base}"
        );
        match chunk.next {
            Some(next) => {
                assert!(
                    next > from || !chunk.data.is_empty(),
                    "a chunk that does not advance from {from}"
                );
                from = next;
            }
            None => return (data, numbers),
        }
    }
    panic!("a download of generation {id} did not end");
}

/// Fails naming the first line number or byte where a read differs from the model.
fn same(what: &str, got: (Vec<u8>, Vec<u64>), want: (Vec<u8>, Vec<u64>)) {
    if let Some(i) = (0..got.1.len().max(want.1.len())).find(|&i| got.1.get(i) != want.1.get(i)) {
        panic!(
            "{what}: line #{i} is {:?}, the model says {:?}",
            got.1.get(i),
            want.1.get(i)
        );
    }
    if let Some(i) = (0..got.0.len().max(want.0.len())).find(|&i| got.0.get(i) != want.0.get(i)) {
        let show = |d: &[u8]| {
            String::from_utf8_lossy(&d[i.saturating_sub(40).min(d.len())..(i + 40).min(d.len())])
                .into_owned()
        };
        panic!(
            "{what}: byte {i} differs: {:?}, the model says {:?}",
            show(&got.0),
            show(&want.0)
        );
    }
}

/// Everything the model says, checked against the store.
async fn check(store: &dyn Store, model: &Model, at: &str) {
    let mut hosts: Vec<&str> = model.keys().map(|k| k.0.as_str()).collect();
    hosts.dedup();
    let listed = store.hosts().await.expect("hosts");
    assert_eq!(listed, hosts, "{at}: hosts");
    for ((host, file, generation), lines) in model {
        let gens = store.generations(host, file).await.expect("generations");
        let g = gens
            .iter()
            .find(|g| &g.name == generation)
            .unwrap_or_else(|| panic!("{at}: {host} {file} {generation} not listed in {gens:?}"));
        let max = *lines.keys().next_back().expect("a generation with lines");
        assert_eq!(
            (g.lines, g.max_line),
            (lines.len() as u64, max),
            "{at}: counts of {host} {file} {generation}"
        );
        for contiguous in [false, true] {
            let got = download(store, g.id, u64::MAX, contiguous, false).await;
            let what =
                format!("{at}: download of {host} {file} {generation} (contiguous: {contiguous})");
            same(&what, got, rendered(lines, contiguous));
        }
        let got = download(store, g.id, u64::MAX, false, true).await;
        same(
            &format!("{at}: search chunks of {host} {file} {generation}"),
            got,
            rendered(lines, false),
        );
        // The backend's own scan (what a search reads), where it has one.
        let mut scanned: BTreeMap<u64, (Vec<u8>, bool)> = BTreeMap::new();
        let mut in_order = true;
        let ran = store.scan_blocking(g.id, None, None, &mut |data, raw| {
            for l in raw.iter() {
                in_order &= scanned
                    .keys()
                    .next_back()
                    .is_none_or(|&last| last < l.number);
                scanned.insert(l.number, (data[l.start..l.end].to_vec(), l.partial));
            }
            true
        });
        if let Some(result) = ran {
            result.expect("scan");
            assert!(
                in_order,
                "{at}: the scan of {host} {file} {generation} is out of order"
            );
            assert!(
                &scanned == lines,
                "{at}: the scan of {host} {file} {generation} differs from the model"
            );
        }
    }
    let files = store.files(None).await.expect("files");
    let listed: usize = files.iter().map(|f| f.generations.len()).sum();
    assert_eq!(listed, model.len(), "{at}: generations listed");
}

/// Runs a random sequence of writes and sweeps (and, given a sled store, sealing rounds: with
/// everything counted as quiet, or only a block's worth sealed) checking the model as it goes.
async fn run(store: &dyn Store, seed: u64, sealer: Option<&SledStore>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut model = Model::new();
    let keep_all = RetentionPolicy {
        retention: Some(Duration::from_secs(86_400)),
        max_disk_bytes: None,
    };
    for step in 0..40 {
        let at = format!("seed {seed}, step {step}");
        let op = rng.u8(0..8);
        if op == 0 {
            store
                .sweep(keep_all, std::time::SystemTime::now())
                .await
                .expect("sweep");
        } else if let (1, Some(sled)) = (op, sealer) {
            let quiet = [Duration::ZERO, Duration::from_secs(3600)][rng.usize(0..2)];
            sled.seal_now(quiet).await.expect("seal");
        } else {
            let batches = request(&mut rng, &model, step);
            let stats = store.write(&batches).await.expect("write");
            let sent: usize = batches.iter().map(|b| b.lines.len()).sum();
            assert_eq!(stats.lines, sent as u64, "{at}: lines acknowledged");
            let before: usize = model.values().map(BTreeMap::len).sum();
            apply(&mut model, &batches);
            let after: usize = model.values().map(BTreeMap::len).sum();
            assert_eq!(
                stats.new_lines,
                (after - before) as u64,
                "{at}: new lines counted"
            );
        }
        if step % 5 == 4 {
            check(store, &model, &at).await;
        }
    }
    check(store, &model, &format!("seed {seed}, end")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sled_store_holds_what_the_model_holds() {
    for seed in seeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(
            dir.path(),
            &SledOptions {
                seal_after: None,
                ..SledOptions::default()
            },
        )
        .expect("open sled");
        run(&store, seed, Some(&store)).await;
    }
}

/// A `redis-server` on an ephemeral port, killed on drop.
struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Redis {
    fn start(dir: &std::path::Path) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (scripts/test installs it: apt-get install redis-server)");
        Redis(child, port)
    }

    /// A store on this server, once it answers (10 s at most).
    async fn store(&self, key_prefix: &str) -> RedisStore {
        let store = RedisStore::new(RedisOptions {
            nodes: vec![format!("redis://127.0.0.1:{}", self.1)],
            username: None,
            password: None,
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            key_prefix: key_prefix.to_owned(),
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.ready().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_holds_what_the_model_holds() {
    for seed in seeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let redis = Redis::start(dir.path());
        let store = redis.store(&format!("model{seed}")).await;
        run(&store, seed, None).await;
    }
}

/// A request naming the same lines twice keeps the later write, on both backends (the Redis
/// store used to write a request's batches concurrently, so the earlier could land last).
async fn a_request_keeps_its_last_write_of_a_line(store: &dyn Store) {
    for round in 0..200u64 {
        let generation = format!("same-{round}");
        // Sizes vary, so that the two batches' pieces finish in either order if they run
        // concurrently.
        let first = [10, 150, 5_000][(round % 3) as usize];
        let batch = |lines: u64, text: &str| FileBatch {
            host: Cow::Borrowed("web-1"),
            file: Cow::Borrowed("twice.log"),
            generation: Cow::Owned(generation.clone()),
            lines: (0..lines)
                .map(|n| Line {
                    number: n,
                    content: Cow::Owned(format!("{text} {n} {}", "x".repeat(200)).into_bytes()),
                    partial: false,
                    ts: None,
                })
                .collect(),
        };
        let stats = store
            .write(&[batch(first, "first"), batch(10, "second")])
            .await
            .expect("write");
        assert_eq!(stats.new_lines, first, "round {round}: new lines");
        let gens = store
            .generations("web-1", "twice.log")
            .await
            .expect("generations");
        let id = gens
            .iter()
            .find(|g| g.name == generation)
            .expect("listed")
            .id;
        let chunk = store
            .read_chunk(id, 0, 9, 1 << 20, false, false)
            .await
            .expect("read");
        let text = String::from_utf8_lossy(&chunk.data);
        assert!(
            text.lines().all(|l| l.starts_with("second ")),
            "round {round}: an earlier write of a request won: {:?}",
            text.lines().find(|l| !l.starts_with("second "))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_keeps_its_last_write_of_a_line_on_sled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), &SledOptions::default()).expect("open sled");
    a_request_keeps_its_last_write_of_a_line(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_keeps_its_last_write_of_a_line_on_redis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = Redis::start(dir.path());
    let store = redis.store("last-write").await;
    a_request_keeps_its_last_write_of_a_line(&store).await;
}

/// Lines that carry their sender's time keep it, and a search's time window finds them by
/// it — the bucket's span covers the lines' times, not only when they arrived — on both
/// backends, in a new bucket and in one already holding lines received now.
async fn a_sender_time_is_kept_and_searched_by(store: &dyn Store) {
    let now = logship_store::clock::now_ms();
    let hour_ago = now - 3_600_000;
    let batch = |from: u64, ts: Option<u64>| FileBatch {
        host: Cow::Borrowed("web-1"),
        file: Cow::Borrowed("pushed.log"),
        generation: Cow::Borrowed("g"),
        lines: (from..from + 3)
            .map(|n| Line {
                number: n,
                content: Cow::Owned(format!("line {n}").into_bytes()),
                partial: false,
                ts: ts.map(|t| t + n),
            })
            .collect(),
    };
    store.write(&[batch(0, None)]).await.expect("received now");
    store
        .write(&[batch(3, Some(hour_ago))])
        .await
        .expect("an hour old");
    store
        .write(&[batch(200, Some(hour_ago))])
        .await
        .expect("new bucket");
    let gens = store
        .generations("web-1", "pushed.log")
        .await
        .expect("gens");
    let id = gens[0].id;
    let around_then = Some((hour_ago - 1_000, hour_ago + 1_000));
    let mut found = Vec::new();
    let mut from = 0;
    loop {
        let chunk = store
            .search_chunk(id, from, 1 << 20, around_then)
            .await
            .expect("search");
        found.extend(chunk.lines.iter().map(|l| (l.number, l.ts)));
        match chunk.next {
            Some(n) => from = n,
            None => break,
        }
    }
    // The bucket-level skip may hand over lines outside the window (the search filters each
    // line by its time); what it must never do is skip the lines inside it.
    let inside: Vec<(u64, Option<u64>)> = found
        .into_iter()
        .filter(|(_, ts)| ts.is_some_and(|t| t.abs_diff(hour_ago) <= 1_000))
        .collect();
    let want: Vec<(u64, Option<u64>)> = [3, 4, 5, 200, 201, 202]
        .into_iter()
        .map(|n| (n, Some(hour_ago + n)))
        .collect();
    assert_eq!(inside, want);
    // A window of the last minute finds the lines stamped on receipt.
    let recent = store
        .search_chunk(id, 0, 1 << 20, Some((now - 60_000, now + 60_000)))
        .await
        .expect("search recent");
    let stamped: Vec<u64> = recent
        .lines
        .iter()
        .filter(|l| l.ts.is_some_and(|t| t >= now))
        .map(|l| l.number)
        .collect();
    assert_eq!(stamped, [0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_time_is_kept_and_searched_by_on_sled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), &SledOptions::default()).expect("open sled");
    a_sender_time_is_kept_and_searched_by(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_time_is_kept_and_searched_by_on_redis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = Redis::start(dir.path());
    let store = redis.store("sender-time").await;
    a_sender_time_is_kept_and_searched_by(&store).await;
}

/// Issue 32.6, on both backends: a generation still written to loses its buckets whose
/// lines are all older than the retention, and keeps the rest (line count, first line and
/// a download follow); a second sweep finds nothing more.
async fn a_live_generation_is_trimmed_to_the_retention(store: &dyn Store) {
    let batch = |from: u64, to: u64| FileBatch {
        host: Cow::Borrowed("web-1"),
        file: Cow::Borrowed("live.log"),
        generation: Cow::Borrowed("g"),
        lines: (from..to)
            .map(|n| Line {
                number: n,
                content: Cow::Owned(format!("line {n}").into_bytes()),
                partial: false,
                ts: None,
            })
            .collect(),
    };
    let t0 = logship_store::clock::now_ms();
    store.write(&[batch(0, 1_000)]).await.expect("old lines");
    // The clock must move on past the retention (1 s) before the young lines come.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while logship_store::clock::now_ms() < t0 + 1_500 {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock did not move"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store
        .write(&[batch(1_000, 1_100)])
        .await
        .expect("young lines");
    let policy = logship_store::RetentionPolicy {
        retention: Some(std::time::Duration::from_secs(1)),
        max_disk_bytes: None,
    };
    let r = store
        .sweep(policy, std::time::SystemTime::now())
        .await
        .expect("sweep");
    // Buckets 0..=6 hold lines 0..896, all old; bucket 7 also holds young lines.
    assert_eq!((r.generations_dropped, r.lines_trimmed), (0, 896));
    let g = &store.generations("web-1", "live.log").await.expect("list")[0];
    assert_eq!((g.lines, g.max_line, g.first_line), (204, 1_099, Some(896)));
    let chunk = store
        .read_chunk(g.id, 0, u64::MAX >> 16, 1 << 20, false, false)
        .await
        .expect("read");
    let want: String = (896..1_100).map(|n| format!("line {n}\n")).collect();
    assert!(chunk.data == want.as_bytes(), "the kept lines differ");
    let again = store
        .sweep(policy, std::time::SystemTime::now())
        .await
        .expect("sweep");
    assert_eq!(again.lines_trimmed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_generation_is_trimmed_to_the_retention_on_sled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), &SledOptions::default()).expect("open sled");
    a_live_generation_is_trimmed_to_the_retention(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_generation_is_trimmed_to_the_retention_on_redis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = Redis::start(dir.path());
    let store = redis.store("trim").await;
    a_live_generation_is_trimmed_to_the_retention(&store).await;
}
