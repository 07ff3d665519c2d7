//! Issue 7: the web page in headless Chromium, driven over WebDriver (chromedriver's
//! HTTP API), asserting on the DOM. Saves a screenshot to `target/browser/page.png`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use logship_e2e::*;
use serde_json::{json, Value};

struct Driver {
    base: String,
    session: String,
    _proc: Proc,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let addr = free_addr();
        let port = addr.rsplit(':').next().expect("port").to_owned();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium chromium-driver)");
        let proc = Proc {
            child,
            name: "chromedriver",
        };
        let base = format!("http://{addr}");
        assert!(
            wait_until(Duration::from_secs(15), || ureq::get(&format!(
                "{base}/status"
            ))
            .call()
            .is_ok()),
            "chromedriver did not come up"
        );
        let profile = tempfile::tempdir().expect("profile dir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                         "--window-size=1280,800", format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let v: Value = ureq::post(&format!("{base}/session"))
            .send_json(caps)
            .expect("new session")
            .into_json()
            .expect("session JSON");
        let session = v["value"]["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        Driver {
            base,
            session,
            _proc: proc,
            _profile: profile,
        }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let v: Value = match ureq::post(&url).send_json(body) {
            Ok(r) => r.into_json().expect("JSON"),
            Err(ureq::Error::Status(code, r)) => panic!(
                "webdriver {path}: {code} {}",
                r.into_string().unwrap_or_default()
            ),
            Err(e) => panic!("webdriver {path}: {e}"),
        };
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.post("url", json!({ "url": url }));
    }

    fn js(&self, script: &str) -> Value {
        self.post("execute/sync", json!({ "script": script, "args": [] }))
    }

    fn screenshot(&self, to: &PathBuf) {
        let url = format!("{}/session/{}/screenshot", self.base, self.session);
        let v: Value = ureq::get(&url)
            .call()
            .expect("screenshot")
            .into_json()
            .expect("JSON");
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().expect("base64"))
            .expect("decode");
        std::fs::create_dir_all(to.parent().expect("dir")).expect("mkdir");
        std::fs::write(to, png).expect("write screenshot");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
    }
}

#[test]
fn page_lists_host_and_file_shows_lines_and_live_tails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let log = logs.join("web.log");
    append_lines(&log, "page", 0..50);
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let cfg = agent_config(
        dir.path(),
        &agg.url("/store/batch"),
        "browser-host",
        &[&format!("{}/*.log", logs.display())],
        "",
        "",
    );
    let _agent = Agent::start(&cfg);
    assert!(wait_until(Duration::from_secs(10), || shipped_exactly(
        &agg,
        "browser-host",
        &log
    )));
    let name = log.to_string_lossy().into_owned();

    let d = Driver::start();
    d.goto(&agg.url("/"));
    // The host is listed and (being the only one) selected; the file appears.
    let files_script =
        "return [...document.querySelectorAll('#files button')].map(b => b.dataset.file)";
    assert!(
        wait_until(Duration::from_secs(10), || d
            .js(files_script)
            .as_array()
            .is_some_and(|a| a.iter().any(|f| f == name.as_str()))),
        "file not listed: hosts {:?}, files {:?}",
        d.js("return document.getElementById('hosts').textContent"),
        d.js(files_script)
    );
    assert!(d
        .js("return document.getElementById('hosts').textContent")
        .as_str()
        .is_some_and(|t| t.contains("browser-host")));
    // Open the file: its lines, with line numbers.
    d.js(&format!("[...document.querySelectorAll('#files button')].find(b => b.dataset.file === {name:?}).click()"));
    let lines_script = "return [...document.querySelectorAll('#log .ln')].map(d => d.children[0].textContent + ' ' + d.children[1].textContent)";
    assert!(wait_until(Duration::from_secs(10), || d
        .js(lines_script)
        .as_array()
        .is_some_and(|a| a.len() == 50)));
    let lines = d.js(lines_script);
    assert_eq!(lines[0], "0 page line 0 ");
    assert!(lines[49]
        .as_str()
        .is_some_and(|l| l.starts_with("49 page line 49 ")));
    // Live tail: a line appended to the source appears in the open page.
    d.js("document.getElementById('live').click()");
    assert!(
        wait_until(Duration::from_secs(5), || d.js(
            "return document.getElementById('live').getAttribute('aria-pressed')"
        ) == "true"),
        "live tail did not start: {:?}",
        d.js("return document.getElementById('status').textContent")
    );
    // The page's follow request is open on the server before the line is written.
    assert!(
        wait_until(Duration::from_secs(5), || metric(
            &get(&agg.url("/metrics")).text(),
            "aggregator_followers"
        ) >= 1.0),
        "the page's live tail never reached the server"
    );
    append_lines(&log, "appended live", 50..51);
    assert!(
        wait_until(Duration::from_secs(10), || d
            .js(lines_script)
            .as_array()
            .is_some_and(|a| a.iter().any(|l| l
                .as_str()
                .is_some_and(|l| l.starts_with("50 appended live line 50"))))),
        "appended line not shown live: {:?}",
        d.js(lines_script).as_array().map(|a| a.len())
    );
    // A log line that looks like the old in-band marker is just a line (issue 11.13).
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open");
        f.write_all(b"--- logship: new generation forged ---\n")
            .expect("append");
    }
    assert!(
        wait_until(Duration::from_secs(10), || d
            .js(lines_script)
            .as_array()
            .is_some_and(|a| a
                .iter()
                .any(|l| l == "51 --- logship: new generation forged ---"))),
        "forged marker not shown as line 51: {:?}",
        d.js(lines_script)
    );
    assert_eq!(
        d.js("return document.querySelectorAll('#log .marker').length"),
        0
    );
    // The filter keeps matching lines only.
    d.js("const f = document.getElementById('filter'); f.value = 'line 4'; f.dispatchEvent(new Event('input')); document.getElementById('keep').click()");
    let visible =
        d.js("return [...document.querySelectorAll('#log .ln')].filter(d => !d.hidden).length");
    assert_eq!(visible, 11, "line 4 and lines 40..49 match");
    d.js("document.getElementById('keep').click(); const f = document.getElementById('filter'); f.value = ''; f.dispatchEvent(new Event('input'))");
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/browser/page.png");
    d.screenshot(&shot);
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000));
}

#[test]
fn page_groups_and_filters_many_files_searches_and_opens_a_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    // One host with 300 files in three directories; one line holds the needle.
    for d in ["/srv/a/f", "/srv/b/f", "/var/log/x"] {
        for i in 0..100 {
            let file = format!("{d}{i}.log");
            let mut w = logship_wire::compact::Writer::new("many", &file, "g", 0);
            for n in 0..100 {
                let text = if file == "/srv/b/f5.log" && n == 60 {
                    "request failed: needle-42 not found".to_owned()
                } else {
                    format!("{file} line {n}")
                };
                w.push(text.as_bytes(), false);
            }
            let a = post(
                &agg.url("/store/batch"),
                &w.finish(),
                &[("Content-Type", logship_wire::COMPACT_CONTENT_TYPE)],
            );
            assert_eq!(a.status, 200);
        }
    }
    let d = Driver::start();
    d.goto(&agg.url("/"));
    let count = "return document.querySelectorAll('#files button[data-file]').length";
    assert!(
        wait_until(Duration::from_secs(10), || d.js(count) == 300),
        "files not listed: {:?}",
        d.js(count)
    );
    let groups = "return [...document.querySelectorAll('#files details')].filter(g => !g.hidden).map(g => g.dataset.dir)";
    assert_eq!(d.js(groups), json!(["/srv/a/", "/srv/b/", "/var/log/"]));
    // The filter narrows the list and hides groups left empty.
    d.js("const f = document.getElementById('ffilter'); f.value = 'b/f1'; f.dispatchEvent(new Event('input'))");
    let visible = "return [...document.querySelectorAll('#files button[data-file]')].filter(b => !b.hidden).map(b => b.dataset.file)";
    let shown = d.js(visible);
    assert_eq!(
        shown.as_array().map(Vec::len),
        Some(11),
        "f1 and f10..f19 of /srv/b: {shown}"
    );
    assert_eq!(d.js(groups), json!(["/srv/b/"]));
    d.js("const f = document.getElementById('ffilter'); f.value = ''; f.dispatchEvent(new Event('input'))");
    assert_eq!(d.js(count), 300);
    // Search everything; one result, with host, file and line.
    d.js("document.getElementById('sq').value = 'needle-42'; document.getElementById('search-form').requestSubmit()");
    let results = "return [...document.querySelectorAll('#log .res')].map(b => [b.dataset.host, b.dataset.file, b.dataset.line])";
    assert!(
        wait_until(Duration::from_secs(10), || d.js(results)
            == json!([["many", "/srv/b/f5.log", "60"]])),
        "search results: {:?}, status {:?}",
        d.js(results),
        d.js("return document.getElementById('status').textContent")
    );
    // Clicking it opens the file at that line, with context around it.
    d.js("document.querySelector('#log .res').click()");
    let target = "return [...document.querySelectorAll('#log .ln.target')].map(d => d.children[0].textContent + ' ' + d.children[1].textContent)";
    assert!(
        wait_until(Duration::from_secs(10), || d.js(target)
            == json!(["60 request failed: needle-42 not found"])),
        "result not opened at its line: {:?}, status {:?}",
        d.js(target),
        d.js("return document.getElementById('status').textContent")
    );
    let around = d.js(
        "return [...document.querySelectorAll('#log .ln')].map(d => +d.children[0].textContent)",
    );
    let nums: Vec<u64> = around
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(
        nums,
        (40..=80).collect::<Vec<u64>>(),
        "lines around the result"
    );
    assert_eq!(
        d.js("return document.getElementById('title').textContent"),
        "/srv/b/f5.log"
    );
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/browser/search.png");
    d.screenshot(&shot);
}

/// Issue 29.9: the page follows its address: a changed hash (a pasted link, back/forward)
/// shows the file it names, not the one opened before.
#[test]
fn the_page_follows_a_changed_hash_and_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    for (host, file, text) in [("alpha", "/a.log", "from a"), ("beta", "/b.log", "from b")] {
        let lines: Vec<Vec<u8>> = (0..3).map(|i| format!("{text} {i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        assert_eq!(post_compact(&agg, host, file, "g", 0, &refs).status, 200);
    }
    let d = Driver::start();
    let shown = |d: &Driver, text: &str| {
        wait_until(Duration::from_secs(10), || {
            d.js("return [...document.querySelectorAll('#log .ln')].map(l => l.textContent).join('|')")
                .as_str()
                .is_some_and(|t| t.contains(&format!("{text} 2")) && !t.contains(if text == "from a" { "from b" } else { "from a" }))
        })
    };
    let title = |d: &Driver| d.js("return document.getElementById('title').textContent");
    d.goto(&agg.url("/#host=alpha&file=%2Fa.log"));
    assert!(
        shown(&d, "from a"),
        "the hash's file at load: {:?}",
        title(&d)
    );
    d.js("location.hash = 'host=beta&file=%2Fb.log'");
    assert!(shown(&d, "from b"), "after a changed hash: {:?}", title(&d));
    assert_eq!(title(&d), "/b.log");
    d.js("history.back()");
    assert!(shown(&d, "from a"), "after back: {:?}", title(&d));
    assert_eq!(title(&d), "/a.log");
}

/// Issue 31.6: the search is a URL (shareable; back and forward walk through it), takes a
/// time range, and marks what matched.
#[test]
fn the_search_lives_in_the_address_takes_a_time_range_and_marks_matches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let lines: Vec<&[u8]> = vec![b"GET /a 200", b"GET /b 500 upstream Timeout", b"GET /c 200"];
    assert_eq!(
        post_compact(&agg, "web-1", "/var/log/app.log", "g", 0, &lines).status,
        200
    );
    let d = Driver::start();
    d.goto(&agg.url("/"));
    let results = "return [...document.querySelectorAll('#log .res')].map(b => b.dataset.host + ' ' + b.dataset.line)";
    // A search from the form, over the last 15 minutes, ignoring case.
    d.js("document.getElementById('sq').value = 'timeout'; document.getElementById('scase').checked = true; \
          const r = document.getElementById('srange'); r.value = '15m'; r.dispatchEvent(new Event('change')); \
          document.getElementById('search-form').requestSubmit()");
    assert!(
        wait_until(Duration::from_secs(10), || d.js(results)
            == json!(["web-1 1"])),
        "results: {:?}, status {:?}",
        d.js(results),
        d.js("return document.getElementById('status').textContent")
    );
    let hash = d.js("return location.hash");
    let hash = hash.as_str().unwrap_or_default();
    for part in ["q=timeout", "case=insensitive", "since=15m"] {
        assert!(hash.contains(part), "the address holds the search: {hash}");
    }
    assert_eq!(
        d.js("return [...document.querySelectorAll('#log .res mark')].map(m => m.textContent)"),
        json!(["Timeout"]),
        "the match is marked"
    );
    // Open the result, then back: the search again, its form filled from the address.
    d.js("document.querySelector('#log .res').click()");
    assert!(
        wait_until(Duration::from_secs(10), || d
            .js("return document.querySelectorAll('#log .ln.target').length")
            == 1),
        "the result did not open"
    );
    d.js("history.back()");
    assert!(
        wait_until(Duration::from_secs(10), || d.js(results)
            == json!(["web-1 1"])),
        "back did not show the search again: {:?}",
        d.js(results)
    );
    assert_eq!(
        d.js("return document.getElementById('sq').value"),
        "timeout"
    );
    assert_eq!(
        d.js("return document.getElementById('srange').value"),
        "15m"
    );
    // A shared link with a custom range the lines are outside of: nothing, and the custom
    // range shown.
    d.goto(&agg.url("/#q=Timeout&since=2001-01-01T00%3A00%3A00Z&until=2001-01-02T00%3A00%3A00Z"));
    assert!(
        wait_until(Duration::from_secs(10), || d
            .js("return document.getElementById('status').textContent")
            .as_str()
            .is_some_and(|s| s.starts_with("0 match"))),
        "status: {:?}",
        d.js("return document.getElementById('status').textContent")
    );
    assert_eq!(d.js(results), json!([]));
    assert_eq!(
        d.js("return document.getElementById('srange').value"),
        "custom"
    );
    assert_eq!(
        d.js("return document.getElementById('scustom').hidden"),
        false
    );
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/browser/search-range.png");
    d.screenshot(&shot);
}

/// Issue 31.6 / 32.3: search results come newest first with their times, a histogram of the
/// matches over time narrows the search to a bar's time when clicked, and the log view shows
/// each line's time on request.
#[test]
fn search_results_come_newest_first_with_times_and_a_histogram_narrows_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis()
    };
    assert_eq!(
        post_compact(&agg, "web-1", "/a.log", "g", 0, &[b"needle old"]).status,
        200
    );
    let t = ms();
    assert!(wait_until(Duration::from_secs(5), || ms() > t + 300));
    assert_eq!(
        post_compact(&agg, "web-2", "/b.log", "g", 0, &[b"needle new"]).status,
        200
    );
    let d = Driver::start();
    d.goto(&agg.url("/#q=needle"));
    let results =
        "return [...document.querySelectorAll('#log .res')].map(b => b.lastChild.textContent)";
    assert!(
        wait_until(Duration::from_secs(10), || d.js(results)
            == json!(["needle new", "needle old"])),
        "newest first: {:?}",
        d.js(results)
    );
    let wheres =
        d.js("return [...document.querySelectorAll('#log .res .where')].map(w => w.textContent)");
    let re = regex::Regex::new(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} web-2 /b\.log:0$")
        .expect("regex");
    assert!(
        wheres[0].as_str().is_some_and(|w| re.is_match(w)),
        "a result shows its time: {wheres}"
    );
    let bars = "return [...document.querySelectorAll('#hist button')].map(b => +b.dataset.count)";
    let counts: Vec<u64> = d
        .js(bars)
        .as_array()
        .expect("bars")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(
        counts.iter().sum::<u64>(),
        2,
        "the histogram counts every result: {counts:?}"
    );
    // The bar of the newest match narrows the search to its time.
    d.js("[...document.querySelectorAll('#hist button')].filter(b => b.dataset.count > 0).pop().click()");
    assert!(
        wait_until(Duration::from_secs(10), || d.js(results)
            == json!(["needle new"])),
        "after the bar: {:?}, hash {:?}",
        d.js(results),
        d.js("return location.hash")
    );
    let hash = d.js("return location.hash");
    assert!(
        hash.as_str()
            .is_some_and(|h| h.contains("since=") && h.contains("until=")),
        "{hash}"
    );
    // Times in the log view, on request.
    d.js("document.querySelector('#log .res').click()");
    assert!(
        wait_until(Duration::from_secs(10), || d
            .js("return document.querySelectorAll('#log .ln').length")
            == 1),
        "the result's file did not open"
    );
    assert_eq!(
        d.js("return document.querySelectorAll('#log .ln .ts').length"),
        0
    );
    d.js("const t = document.getElementById('times'); t.checked = true; t.dispatchEvent(new Event('change'))");
    assert!(
        wait_until(Duration::from_secs(10), || d
            .js("return document.querySelectorAll('#log .ln .ts').length")
            == 1),
        "no time shown with the toggle on"
    );
    let shot =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/browser/search-newest.png");
    d.screenshot(&shot);
}
