//! Issue 15: `GET /store/search` against a model — random stored lines (bytes that are not
//! UTF-8 included), many random queries (literals, regexes, case, scope, receive-time
//! windows, limits, context) compared with the same search done here over the source
//! lines; a search during ingest sees every line acknowledged before it began; hostile
//! queries get clear 4xx answers; a disconnected client stops its scan.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use logship_e2e::*;

/// One stored line in the model.
#[derive(Debug, Clone)]
struct Line {
    number: u64,
    content: Vec<u8>,
    /// Written after the window's midpoint.
    late: bool,
    /// Sent without its end (a partial line): still its own line, before the next one.
    partial: bool,
}

/// host → file → generations (oldest first) → lines.
type Model = BTreeMap<String, BTreeMap<String, Vec<(String, Vec<Line>)>>>;

const WORDS: &[&[u8]] = &[
    b"GET",
    b"POST",
    b"ERROR",
    b"error",
    b"warn",
    b"req-",
    b"timeout",
    b"user",
    b"/api/v1",
    b"\xff\xfe",
    b"caf\xc3\xa9",
    b"\xc3",
    b"200",
    b"500",
    b"[x]",
    b"a.b",
    b"  ",
];

fn random_line(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut l = Vec::new();
    for _ in 0..rng.usize(1..8) {
        l.extend_from_slice(WORDS[rng.usize(..WORDS.len())]);
        if rng.bool() {
            l.extend_from_slice(format!("{}", rng.u32(..1000)).as_bytes());
        }
        l.push(b' ');
    }
    l
}

fn post_generation(
    agg: &Aggregator,
    host: &str,
    file: &str,
    generation: &str,
    lines: &[Line],
    rng: &mut fastrand::Rng,
) {
    // In batches of random size, some out of order.
    let mut batches: Vec<&[Line]> = lines.chunks(rng.usize(20..150)).collect();
    if rng.bool() {
        batches.reverse();
    }
    for b in batches {
        let mut w = logship_wire::compact::Writer::new(host, file, generation, b[0].number);
        for l in b {
            w.push(&l.content, l.partial);
        }
        let a = post(
            &agg.url("/store/batch"),
            &w.finish(),
            &[("Content-Type", logship_wire::COMPACT_CONTENT_TYPE)],
        );
        assert_eq!(a.status, 200, "{}", a.text());
    }
}

/// A query and the parameters the model needs.
#[derive(Debug)]
struct Q {
    params: String,
    matcher: regex::bytes::Regex,
    host: Option<String>,
    host_prefix: Option<String>,
    file_exact: Option<String>,
    file_glob: Option<String>,
    generation: Option<String>,
    /// Some(true): only late lines; Some(false): only early ones.
    late: Option<bool>,
    limit: usize,
    context: usize,
}

fn enc_bytes(b: &[u8]) -> String {
    b.iter().map(|c| format!("%{c:02X}")).collect()
}

fn random_query(rng: &mut fastrand::Rng, model: &Model, mid_ms: u64) -> Q {
    let mut params = Vec::new();
    let (matcher, is_regex_text);
    match rng.u8(..3) {
        0 => {
            // A piece of a stored line, any bytes.
            let hosts: Vec<_> = model.values().collect();
            let files: Vec<_> = hosts[rng.usize(..hosts.len())].values().collect();
            let gens = files[rng.usize(..files.len())];
            let lines = &gens[rng.usize(..gens.len())].1;
            let l = &lines[rng.usize(..lines.len())].content;
            let a = rng.usize(..l.len().saturating_sub(2).max(1));
            let piece = &l[a..(a + rng.usize(2..6)).min(l.len())];
            params.push(format!("q={}", enc_bytes(piece)));
            let escaped: String = piece.iter().map(|c| format!("(?-u:\\x{c:02x})")).collect();
            matcher = regex::bytes::Regex::new(&escaped).expect("literal");
            is_regex_text = None;
        }
        1 => {
            let word = [&b"error"[..], b"ERROR", b"timeout", b"user", b"a.b"][rng.usize(..5)];
            let insensitive = rng.bool();
            params.push(format!("q={}", enc_bytes(word)));
            if insensitive {
                params.push("case=insensitive".into());
            }
            let w = std::str::from_utf8(word).expect("ascii");
            matcher = regex::bytes::RegexBuilder::new(&regex::escape(w))
                .case_insensitive(insensitive)
                .build()
                .expect("word");
            is_regex_text = None;
        }
        _ => {
            let r = [
                r"^GET",
                r"(timeout|500) ",
                r"req-\d+",
                r"[0-9]{3} $",
                r"(?-u:\xff)",
                r"caf(?-u:\xc3\xa9)",
                r"e.r",
            ][rng.usize(..7)];
            params.push(format!("q={}&regex=true", enc(r)));
            matcher = regex::bytes::RegexBuilder::new(r)
                .multi_line(true)
                .build()
                .expect("regex");
            is_regex_text = Some(r);
        }
    }
    let _ = is_regex_text;
    let mut q = Q {
        params: String::new(),
        matcher,
        host: None,
        host_prefix: None,
        file_exact: None,
        file_glob: None,
        generation: None,
        late: None,
        // The server's default.
        limit: 1_000,
        context: 0,
    };
    match rng.u8(..4) {
        0 => {
            let hosts: Vec<&String> = model.keys().collect();
            let h = hosts[rng.usize(..hosts.len())].clone();
            params.push(format!("host={}", enc(&h)));
            q.host = Some(h);
        }
        // A host glob, as `file=` takes one (it answered nothing before).
        1 => {
            params.push("host=host-*".into());
            q.host_prefix = Some("host-".into());
        }
        _ => {}
    }
    match rng.u8(..4) {
        0 => {
            let f = format!("/var/log/app{}.log", rng.u8(..4));
            params.push(format!("file={}", enc(&f)));
            q.file_exact = Some(f);
        }
        1 => {
            params.push(format!("file={}", enc("/var/log/app[12]*")));
            q.file_glob = Some("12".into());
        }
        _ => {}
    }
    if rng.u8(..5) == 0 {
        params.push("generation=g1".into());
        q.generation = Some("g1".into());
    }
    match rng.u8(..4) {
        0 => {
            params.push(format!("since={}", rfc3339(mid_ms)));
            q.late = Some(true);
        }
        1 => {
            params.push(format!("until={}", rfc3339(mid_ms)));
            q.late = Some(false);
        }
        _ => {}
    }
    if rng.bool() {
        q.limit = rng.usize(1..40);
        params.push(format!("limit={}", q.limit));
    }
    if rng.u8(..3) == 0 {
        q.context = rng.usize(1..4);
        params.push(format!("context={}", q.context));
    }
    q.params = params.join("&");
    q
}

fn rfc3339(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    // Whole milliseconds in UTC, e.g. 2026-11-29T10:00:00.123Z.
    let secs = ms / 1000;
    let _ = t;
    let days = secs / 86_400;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        ms % 1000
    )
}

/// (host, file, generation, line, content, context) in the order the search must give.
type Hit = (String, String, String, u64, Vec<u8>, bool);

fn expected(model: &Model, q: &Q) -> (Vec<Hit>, bool) {
    let mut out = Vec::new();
    let mut matches = 0usize;
    for (host, files) in model {
        if q.host.as_ref().is_some_and(|h| h != host)
            || q.host_prefix.as_ref().is_some_and(|p| !host.starts_with(p))
        {
            continue;
        }
        for (file, gens) in files {
            if q.file_exact.as_ref().is_some_and(|f| f != file) {
                continue;
            }
            if let Some(digits) = &q.file_glob {
                let ok = file
                    .strip_prefix("/var/log/app")
                    .and_then(|r| r.chars().next())
                    .is_some_and(|c| digits.contains(c));
                if !ok {
                    continue;
                }
            }
            for (generation, lines) in gens {
                if q.generation.as_ref().is_some_and(|g| g != generation) {
                    continue;
                }
                let lines: Vec<&Line> = lines
                    .iter()
                    .filter(|l| q.late.is_none_or(|late| l.late == late))
                    .collect();
                let mut written: Option<usize> = None;
                let mut after = 0usize;
                for (i, l) in lines.iter().enumerate() {
                    let hit = |ctx: bool, l: &Line| {
                        (
                            host.clone(),
                            file.clone(),
                            generation.clone(),
                            l.number,
                            l.content.clone(),
                            ctx,
                        )
                    };
                    if q.matcher.is_match(&l.content) {
                        let start = i.saturating_sub(q.context);
                        for (j, before) in lines.iter().enumerate().take(i).skip(start) {
                            if written.is_none_or(|w| j > w) {
                                out.push(hit(true, before));
                            }
                        }
                        out.push(hit(false, l));
                        written = Some(i);
                        matches += 1;
                        if matches >= q.limit {
                            return (out, true);
                        }
                        after = q.context;
                    } else if after > 0 {
                        out.push(hit(true, l));
                        written = Some(i);
                        after -= 1;
                    }
                }
            }
        }
    }
    (out, false)
}

fn parse_results(body: &[u8]) -> (Vec<Hit>, serde_json::Value) {
    use base64::Engine;
    let mut hits = Vec::new();
    let mut summary = serde_json::Value::Null;
    for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_slice(line).expect("ndjson");
        if v.get("summary").is_some() {
            summary = v["summary"].clone();
            continue;
        }
        let content = match v["content"].as_str() {
            Some(s) => s.as_bytes().to_vec(),
            None => base64::engine::general_purpose::STANDARD
                .decode(v["content_base64"].as_str().expect("content"))
                .expect("base64"),
        };
        hits.push((
            v["host"].as_str().expect("host").to_owned(),
            v["file"].as_str().expect("file").to_owned(),
            v["generation"].as_str().expect("generation").to_owned(),
            v["line"].as_u64().expect("line"),
            content,
            v["context"].as_bool().unwrap_or(false),
        ));
    }
    (hits, summary)
}

fn search_matches_a_model_of_random_lines_and_queries(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = backend.aggregator(dir.path(), "", &[]);
    let seed = std::env::var("LOGSHIP_SEARCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7u64);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut model: Model = BTreeMap::new();
    let mut late_files = Vec::new();
    for h in ["host-a", "host-b", "web-1"] {
        for f in 0..4 {
            let file = format!("/var/log/app{f}.log");
            // One file per host spans several 256 KiB chunks, so context and matches cross
            // chunk boundaries.
            let n = if f == 0 { 12_000 } else { rng.u64(30..400) };
            let lines: Vec<Line> = (0..n)
                .map(|i| Line {
                    number: i,
                    content: random_line(&mut rng),
                    late: false,
                    partial: rng.u8(..20) == 0,
                })
                .collect();
            post_generation(&agg, h, &file, "g1", &lines, &mut rng);
            model
                .entry(h.to_owned())
                .or_default()
                .insert(file.clone(), vec![("g1".to_owned(), lines)]);
            if rng.bool() {
                late_files.push((h.to_owned(), file));
            }
        }
    }
    // The window's midpoint: everything after it is a second generation, in new buckets.
    std::thread::sleep(Duration::from_millis(30));
    let mid_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    std::thread::sleep(Duration::from_millis(30));
    for (h, file) in &late_files {
        let lines: Vec<Line> = (0..rng.u64(10..200))
            .map(|i| Line {
                number: i,
                content: random_line(&mut rng),
                late: true,
                partial: rng.u8(..20) == 0,
            })
            .collect();
        post_generation(&agg, h, file, "g2", &lines, &mut rng);
        model
            .get_mut(h)
            .and_then(|f| f.get_mut(file))
            .expect("file")
            .push(("g2".to_owned(), lines));
    }
    let mut checked = 0;
    let mut nonempty = 0;
    for i in 0..80 {
        let q = random_query(&mut rng, &model, mid_ms);
        let a = get(&agg.url(&format!("/store/search?{}", q.params)));
        assert_eq!(a.status, 200, "query {i} ({}): {}", q.params, a.text());
        let (got, summary) = parse_results(&a.body);
        let (want, truncated) = expected(&model, &q);
        assert_eq!(
            got.len(),
            want.len(),
            "seed {seed}, query {i} ({}): {} results, the model says {}",
            q.params,
            got.len(),
            want.len()
        );
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "seed {seed}, query {i} ({}), result {k}", q.params);
        }
        assert_eq!(
            summary["truncated"].as_bool(),
            Some(truncated),
            "seed {seed}, query {i} ({}): {summary}",
            q.params
        );
        checked += 1;
        nonempty += usize::from(!want.is_empty());
    }
    assert_eq!(checked, 80);
    assert!(
        nonempty >= 40,
        "only {nonempty} queries found anything: the model is too sparse"
    );
}

fn a_search_during_ingest_sees_every_line_acknowledged_before_it_began(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = backend.aggregator(dir.path(), "", &[]);
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (acked, stop, url) = (acked.clone(), stop.clone(), agg.url("/store/batch"));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < 60_000 {
                let file = format!("/f{}.log", (n / 500) % 8);
                let mut w =
                    logship_wire::compact::Writer::new("h", &file, "g", (n / 4000) * 500 + n % 500);
                for k in 0..500 {
                    w.push(format!("tok-{} payload", n + k).as_bytes(), false);
                }
                let a = post(
                    &url,
                    &w.finish(),
                    &[("Content-Type", logship_wire::COMPACT_CONTENT_TYPE)],
                );
                assert_eq!(a.status, 200);
                n += 500;
                acked.store(n, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    assert!(wait_until(Duration::from_secs(30), || acked
        .load(std::sync::atomic::Ordering::SeqCst)
        >= 10_000));
    let before = acked.load(std::sync::atomic::Ordering::SeqCst);
    let a = get(&agg.url("/store/search?q=tok-&limit=100000"));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.join().expect("writer");
    assert_eq!(a.status, 200);
    let (hits, summary) = parse_results(&a.body);
    let mut seen = std::collections::HashSet::new();
    for h in &hits {
        let text = String::from_utf8_lossy(&h.4);
        let n: u64 = text
            .strip_prefix("tok-")
            .and_then(|r| r.split(' ').next())
            .and_then(|d| d.parse().ok())
            .expect("token");
        seen.insert(n);
    }
    let missing: Vec<u64> = (0..before).filter(|n| !seen.contains(n)).take(5).collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the search but not found: {missing:?} ({summary})"
    );
    assert_eq!(summary["truncated"], false);
}

/// Stores `batches` × 2,000 copies of one 155-byte line in `/big.log` of host `h`.
fn store_lorem(agg: &Aggregator, batches: u64) {
    let line =
        "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor ".repeat(2);
    for b in 0..batches {
        let mut w = logship_wire::compact::Writer::new("h", "/big.log", "g", b * 2_000);
        for _ in 0..2_000 {
            w.push(line.as_bytes(), false);
        }
        let a = post(
            &agg.url("/store/batch"),
            &w.finish(),
            &[("Content-Type", logship_wire::COMPACT_CONTENT_TYPE)],
        );
        assert_eq!(a.status, 200);
    }
}

logship_e2e::both_backends!(
    search_matches_a_model_of_random_lines_and_queries,
    a_search_during_ingest_sees_every_line_acknowledged_before_it_began,
);

#[test]
fn hostile_queries_get_clear_4xx_and_the_time_limit_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(
        dir.path(),
        "[search]\ntimeout = \"1ms\"\nmax_searches = 1\n",
    );
    // ~12 MB of lines: more than a search can scan in the 1 ms it is given.
    store_lorem(&agg, 40);
    for (q, want) in [
        ("", "missing parameter `q`"),
        ("q=", "must not be empty"),
        ("q=x&limit=0", "at least 1"),
        ("q=x&since=last+tuesday", "`since`"),
        ("q=x&until=2026-13-45T99:00:00Z", "`until`"),
        ("q=x&bogus=1", "unknown parameter `bogus`"),
        ("q=%28unclosed&regex=true", "not a usable regex"),
        ("q=x&context=100000", "at most"),
    ] {
        let a = get(&agg.url(&format!("/store/search?{q}")));
        assert_eq!(a.status, 400, "{q}: {}", a.text());
        let msg = a.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(msg.contains(want), "{q}: {msg}");
    }
    // A compiled pattern past the size limit.
    let huge = enc(&"(a|b|c|d){500}".repeat(20));
    let a = get(&agg.url(&format!("/store/search?regex=true&q={huge}")));
    assert_eq!(a.status, 400, "{}", a.text());
    // A pattern that matches nothing makes the search read everything: the time limit ends
    // it (the regex crate is linear, so no pattern is catastrophic; the limit bounds even a
    // linear scan of a large store), and the summary says so.
    let t = Instant::now();
    let a = get(&agg.url(&format!(
        "/store/search?regex=true&case=insensitive&q={}",
        enc(r"(\w+\s+){4}zq\w*")
    )));
    assert_eq!(a.status, 200);
    let (_, summary) = parse_results(&a.body);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(
        summary["reason"], "time limit (search.timeout)",
        "{summary}"
    );
    assert_eq!(summary["truncated"], true);
}

#[test]
fn a_client_that_disconnects_stops_its_search() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(
        dir.path(),
        "[search]\ntimeout = \"60s\"\nmax_searches = 1\n",
    );
    store_lorem(&agg, 60);
    // Every line matches: 120k results, far more than the socket and the channel hold, so
    // the search waits on a client that reads nothing.
    let slow = "/store/search?q=lorem&limit=100000";
    // Start it, read its head, stop reading, then hang up.
    let mut s = std::net::TcpStream::connect(agg.addr()).expect("connect");
    write!(s, "GET {slow} HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut head = [0u8; 64];
    let n = s.read(&mut head).expect("head");
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    // While it runs, a second search is refused (max_searches = 1).
    let busy = get(&agg.url("/store/search?q=x"));
    assert_eq!(busy.status, 503, "{}", busy.text());
    drop(s);
    // Gone client, stopped scan: its slot frees at once.
    assert!(
        wait_until(
            Duration::from_secs(5),
            || get(&agg.url("/store/search?q=x")).status == 200
        ),
        "the search kept running after its client left"
    );
    // And the CPU goes back to idle.
    let pid = agg.proc.child.id();
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r).to_owned();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (t(11) + t(12)) / 100.0
    };
    let c0 = cpu();
    std::thread::sleep(Duration::from_millis(1000));
    let used = cpu() - c0;
    assert!(
        used < 0.3,
        "the aggregator used {used:.2} s of CPU in the second after the client left"
    );
}

/// Issue 29.8: when the limit stops a search across several files, the summary still says
/// what was read (it said 0 lines and 0 bytes).
#[test]
fn a_search_cut_by_its_limit_reports_what_it_scanned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let lines: Vec<Vec<u8>> = (0..2_000)
        .map(|i| format!("line {i} match").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    for f in 0..4 {
        let a = post_compact(&agg, "h", &format!("/f{f}"), "g", 0, &refs);
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let a = get(&agg.url("/store/search?q=match&limit=5"));
    assert_eq!(a.status, 200);
    let (hits, summary) = parse_results(&a.body);
    assert_eq!(hits.len(), 5);
    let s = &summary;
    assert_eq!(s["truncated"], true, "{summary}");
    assert!(s["lines_scanned"].as_u64().unwrap_or(0) >= 5, "{summary}");
    assert!(s["bytes_scanned"].as_u64().unwrap_or(0) >= 50, "{summary}");
}

/// Issue 29.6: on bytes that are not UTF-8 a regex answers as `rg -a` does on the same file
/// (and GNU `grep -a` in a UTF-8 locale): `.` is one UTF-8 character, so it does not match
/// an invalid byte; `(?-u)` (or `(?-u:.)`) makes it match any byte, as in the C locale.
#[test]
fn regexes_on_bytes_that_are_not_utf8_answer_as_rg_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let lines: [&[u8]; 6] = [
        b"foo\xffbar",
        "fooébar".as_bytes(),
        b"foo\xc3bar",
        b"foobar",
        b"foo bar \xfe\xfe",
        b"\xff\xff",
    ];
    let a = post_compact(&agg, "h", "/bytes", "g", 0, &lines);
    assert_eq!(a.status, 200, "{}", a.text());
    let file = dir.path().join("bytes.log");
    let raw: Vec<u8> = lines.iter().flat_map(|l| [*l, b"\n"].concat()).collect();
    std::fs::write(&file, raw).expect("write");
    for pattern in [
        "foo.*bar",
        "foo.bar",
        "(?-u)foo.bar",
        "foo(?-u:.)bar",
        "^.*$",
        "(?-u)^.+$",
        r"bar\s.+$",
    ] {
        let rg = std::process::Command::new("rg")
            .args(["-a", "-n", "--no-filename", pattern])
            .arg(&file)
            .output()
            .expect("ripgrep (rg) is needed: apt-get install ripgrep (scripts/test does)");
        let want: Vec<u64> = String::from_utf8_lossy(&rg.stdout)
            .lines()
            .filter_map(|l| l.split(':').next()?.parse::<u64>().ok())
            .map(|n| n - 1)
            .collect();
        let a = get(&agg.url(&format!(
            "/store/search?q={}&regex=true&file=/bytes",
            enc(pattern)
        )));
        assert_eq!(a.status, 200, "{pattern}: {}", a.text());
        let (hits, _) = parse_results(&a.body);
        let got: Vec<u64> = hits.iter().map(|h| h.3).collect();
        assert_eq!(got, want, "{pattern}: ours against rg -a");
    }
}
