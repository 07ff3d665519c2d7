//! Issue 13: agent → aggregator over TLS and mutual TLS; every TLS failure parks the files
//! (nothing dead-lettered, nothing lost) until the config is fixed; tokens from files rotate
//! while shipping; dead letters are listed and replayed; garbage handshakes cost nothing
//! to anyone else.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use logship_e2e::*;

fn dead_letters(state: &Path) -> usize {
    std::fs::read_dir(state.join("dead-letter")).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "lsb"))
            .count()
    })
}

/// An agent config shipping `logs/*.log` as host `h` to `https://localhost:PORT`, trusting
/// `ca`, with a client certificate when `client_cert`, and `sink_extra` in `[sink]`.
fn tls_agent(
    dir: &Path,
    agg: &Aggregator,
    pki: &Pki,
    ca: &str,
    client_cert: bool,
    top_extra: &str,
    sink_extra: &str,
) -> PathBuf {
    let port = agg.addr().rsplit(':').next().expect("port");
    let cfg = agent_config(
        dir,
        &format!("https://localhost:{port}/store/batch"),
        "h",
        &[&format!("{}/*.log", dir.join("logs").display())],
        top_extra,
        "",
    );
    let mut sink = format!("[sink]\nca_file = {}\n{sink_extra}\n", pki.path(ca));
    if client_cert {
        sink.push_str(&format!(
            "client_cert_file = {}\nclient_key_file = {}\n",
            pki.path("client.pem"),
            pki.path("client.key")
        ));
    }
    let text = std::fs::read_to_string(&cfg).expect("read");
    std::fs::write(&cfg, text.replace("[sink]\n", &sink)).expect("write");
    cfg
}

fn log_files(dir: &Path, n: usize, lines: usize) -> Vec<PathBuf> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    (0..n)
        .map(|i| {
            let f = logs.join(format!("f{i}.log"));
            append_lines(&f, &format!("file {i}"), 0..lines);
            f
        })
        .collect()
}

/// Whether every file downloads byte-identical through `client`.
fn all_shipped(client: &ureq::Agent, agg: &Aggregator, host: &str, files: &[PathBuf]) -> bool {
    files.iter().all(|f| {
        let want = std::fs::read(f).expect("read");
        let url = agg.url(&format!(
            "/store/log?host={}&file={}",
            enc(host),
            enc(&f.to_string_lossy())
        ));
        try_get_via(client, &url).is_ok_and(|a| a.status == 200 && a.body == want)
    })
}

#[test]
fn agent_ships_over_tls_and_mutual_tls_byte_identical() {
    for mutual in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::generate(&dir.path().join("pki"));
        let agg = Aggregator::with_config(dir.path(), &pki.server_toml("server", mutual));
        assert!(agg.base.starts_with("https://"), "{}", agg.base);
        let files = log_files(dir.path(), 10, 2_000);
        let cfg = tls_agent(dir.path(), &agg, &pki, "ca.pem", mutual, "", "");
        // The host comes from the environment and looks like a number: it stays a string.
        let log = dir.path().join("agent.log");
        let _agent = Agent::start_logged(&cfg, &[("AGENT_HOST", "12345")], &log);
        let client = pki.client(mutual);
        assert!(
            wait_until(Duration::from_secs(60), || all_shipped(
                &client, &agg, "12345", &files
            )),
            "mutual={mutual}: not every file arrived byte-identical over TLS; agent log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // Plain HTTP on the TLS port gets no HTTP answer.
        let plain = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build();
        let http_url = agg.url("/ruok").replacen("https://", "http://", 1);
        assert!(
            try_get_via(&plain, &http_url).is_err(),
            "plain HTTP answered"
        );
        if mutual {
            let e = try_get_via(&pki.client(false), &agg.url("/ruok"))
                .expect_err("a client without a certificate must be refused");
            assert!(!e.is_empty());
        }
        assert_eq!(dead_letters(&dir.path().join("state")), 0);
    }
}

#[derive(Debug, Clone, Copy)]
enum Broken {
    WrongCa,
    ExpiredServerCert,
    HostnameMismatch,
    MutualWithoutClientCert,
}

/// Starts a pair broken in `how`; checks that files park with a clear, rate-limited error
/// and nothing is stored or dead-lettered; fixes it by restarting the broken side with the
/// right config; checks that everything arrives exactly once.
fn parks_until_fixed(how: Broken) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let pki = Pki::generate(&d.join("pki"));
    let (server_cert, mutual) = match how {
        Broken::ExpiredServerCert => ("expired", false),
        Broken::HostnameMismatch => ("wrong-host", false),
        Broken::MutualWithoutClientCert => ("server", true),
        Broken::WrongCa => ("server", false),
    };
    let agg_cfg = d.join("agg.toml");
    std::fs::write(&agg_cfg, pki.server_toml(server_cert, mutual)).expect("write");
    let data = d.join("data");
    let mut agg = Aggregator::start(&data, &["--config", &agg_cfg.to_string_lossy()]);
    let files = log_files(d, 5, 1_000);
    let metrics = free_addr();
    let top = format!("metrics_listen = {metrics:?}\nshutdown_timeout = \"2s\"");
    let ca = if matches!(how, Broken::WrongCa) {
        "other-ca.pem"
    } else {
        "ca.pem"
    };
    let with_cert = mutual && !matches!(how, Broken::MutualWithoutClientCert);
    let cfg = tls_agent(d, &agg, &pki, ca, with_cert, &top, "");
    let log = d.join("agent.log");
    let mut agent = Agent::start_logged(&cfg, &[], &log);
    assert!(
        wait_until(Duration::from_secs(30), || agent_metric(
            &metrics,
            "agent_parked_files "
        ) >= 1.0),
        "{how:?}: no file parked; agent log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Several retries later: still nothing stored, nothing dead-lettered, one error line.
    let client = pki.client(mutual);
    let retried = wait_until(Duration::from_secs(5), || {
        agent_metric(&metrics, "agent_parked_files ") >= 5.0
    });
    // A look inside needs a client that accepts the broken certificate.
    let inspector = match how {
        Broken::ExpiredServerCert | Broken::HostnameMismatch => unverified_client(),
        _ => pki.client(mutual),
    };
    let listed = get_via(&inspector, &agg.url("/store/files?host=h")).json();
    assert_eq!(
        listed["files"].as_array().map_or(0, Vec::len),
        0,
        "{how:?}: something was stored: {listed}"
    );
    assert_eq!(dead_letters(&d.join("state")), 0, "{how:?}: dead-lettered");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("TLS: ")).collect();
    assert_eq!(
        errors.len(),
        1,
        "{how:?} (all parked: {retried}): one TLS error a minute expected, log:\n{text}"
    );
    assert!(
        errors[0].contains("https://localhost:"),
        "{how:?}: the error names the endpoint: {}",
        errors[0]
    );

    // The fix: restart whichever side was wrong, with the right config.
    match how {
        Broken::ExpiredServerCert | Broken::HostnameMismatch => {
            let addr = agg.addr().to_owned();
            agg.proc.signal("TERM");
            agg.proc.wait_exit(Duration::from_secs(15));
            std::fs::write(&agg_cfg, pki.server_toml("server", mutual)).expect("write");
            agg = Aggregator::start_on(&data, &addr, &["--config", &agg_cfg.to_string_lossy()]);
        }
        Broken::WrongCa | Broken::MutualWithoutClientCert => {
            agent.proc.signal("TERM");
            agent.proc.wait_exit(Duration::from_secs(15));
            let cfg = tls_agent(d, &agg, &pki, "ca.pem", mutual, &top, "");
            agent = Agent::start_logged(&cfg, &[], &log);
        }
    }
    assert!(
        wait_until(Duration::from_secs(60), || all_shipped(
            &client, &agg, "h", &files
        )),
        "{how:?}: not delivered after the fix; agent log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let listed = get_via(&client, &agg.url("/store/files?host=h")).json();
    for f in listed["files"].as_array().expect("files") {
        assert_eq!(f["generations"][0]["lines"], 1_000, "{how:?}: {f}");
    }
    assert_eq!(dead_letters(&d.join("state")), 0, "{how:?}: dead-lettered");
    drop(agent);
}

#[test]
fn a_wrong_ca_parks_until_fixed() {
    parks_until_fixed(Broken::WrongCa);
}

#[test]
fn an_expired_server_certificate_parks_until_fixed() {
    parks_until_fixed(Broken::ExpiredServerCert);
}

#[test]
fn a_hostname_mismatch_parks_until_fixed() {
    parks_until_fixed(Broken::HostnameMismatch);
}

#[test]
fn mutual_tls_without_a_client_certificate_parks_until_fixed() {
    parks_until_fixed(Broken::MutualWithoutClientCert);
}

#[test]
fn tokens_rotated_through_files_while_shipping_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let pki = Pki::generate(&d.join("pki"));
    let server_tokens = d.join("write-tokens");
    std::fs::write(&server_tokens, "# rotated by ops\nold-token\n").expect("write");
    let agg = Aggregator::with_config(
        d,
        &format!(
            "{}[auth]\nwrite_tokens_file = {:?}\n",
            pki.server_toml("server", false),
            server_tokens.to_string_lossy()
        ),
    );
    let agent_token = d.join("agent-token");
    std::fs::write(&agent_token, "old-token\n").expect("write");
    let files = log_files(d, 5, 200);
    let metrics = free_addr();
    let cfg = tls_agent(
        d,
        &agg,
        &pki,
        "ca.pem",
        false,
        &format!("metrics_listen = {metrics:?}"),
        &format!("token_file = {:?}", agent_token.to_string_lossy()),
    );
    let log = d.join("agent.log");
    let agent = Agent::start_logged(&cfg, &[], &log);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, files) = (stop.clone(), files.clone());
        std::thread::spawn(move || {
            let mut n = 200;
            while !stop.load(Ordering::SeqCst) {
                for (i, f) in files.iter().enumerate() {
                    append_lines(f, &format!("file {i}"), n..n + 50);
                }
                n += 50;
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };
    let client = pki.client(false);
    let stored = |agg: &Aggregator| {
        get_via(&client, &agg.url("/store/files?host=h")).json()["files"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert!(wait_until(Duration::from_secs(30), || stored(&agg) == 5));
    // The aggregator takes only the new token: the agent parks.
    std::fs::write(&server_tokens, "new-token\n").expect("write");
    agg.proc.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(30), || agent_metric(
            &metrics,
            "agent_parked_files "
        ) >= 1.0),
        "the old token was not refused"
    );
    // The agent gets the new token.
    std::fs::write(&agent_token, "new-token\n").expect("write");
    agent.proc.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(30), || agent_metric(
            &metrics,
            "agent_parked_files "
        ) == 0.0),
        "files still parked with the new token"
    );
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    assert!(
        wait_until(Duration::from_secs(60), || all_shipped(
            &client, &agg, "h", &files
        )),
        "not every line arrived after the rotation; agent log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(dead_letters(&d.join("state")), 0);
    assert_eq!(agent_metric(&metrics, "agent_dead_letters_total"), 0.0);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("old-token") && !text.contains("new-token"),
        "a token was logged:\n{text}"
    );
}

#[test]
fn a_dead_letter_is_listed_and_replayed_once_the_aggregator_accepts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let agg_cfg = d.join("agg.toml");
    std::fs::write(&agg_cfg, "[limits]\nmax_line_bytes = \"1KiB\"\n").expect("write");
    let data = d.join("data");
    let agg = Aggregator::start(&data, &["--config", &agg_cfg.to_string_lossy()]);
    let logs = d.join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let f = logs.join("app.log");
    {
        let mut w = std::fs::File::create(&f).expect("create");
        for i in 0..10 {
            writeln!(w, "before {i}").expect("write");
        }
        writeln!(w, "{}", "L".repeat(4_000)).expect("write");
        for i in 0..10 {
            writeln!(w, "after {i}").expect("write");
        }
    }
    let (_agent, _metrics) = agent_with_metrics(d, &agg, &logs, "", "");
    let cfg = d.join("agent.toml");
    let cfg_s = cfg.to_string_lossy().into_owned();
    let state = d.join("state");
    assert!(
        wait_until(Duration::from_secs(30), || dead_letters(&state) == 1
            && generations(&agg, "h", &f.to_string_lossy())
                .first()
                .is_some_and(|g| g.1 == 20)),
        "the long line was not dead-lettered beside 20 stored lines"
    );
    let (code, out, err) = run_bin(
        "agent",
        &["--config", &cfg_s, "dead-letters", "list"],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("lines 10..=10 (1 lines)") && out.contains("413"),
        "list shows the lines and the reason:\n{out}"
    );
    // Still too long for this aggregator: refused again and kept.
    let (code, out, _) = run_bin(
        "agent",
        &["--config", &cfg_s, "dead-letters", "replay"],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("refused again"), "{out}");
    assert_eq!(dead_letters(&state), 1);
    // The operator raises the limit; the replay delivers and deletes it.
    let addr = agg.addr().to_owned();
    drop(agg);
    std::fs::write(&agg_cfg, "[limits]\nmax_line_bytes = \"1MiB\"\n").expect("write");
    let agg = Aggregator::start_on(&data, &addr, &["--config", &agg_cfg.to_string_lossy()]);
    let (code, out, err) = run_bin(
        "agent",
        &["--config", &cfg_s, "dead-letters", "replay"],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("# delivered 1, left 0"), "{out}");
    assert_eq!(dead_letters(&state), 0);
    assert!(
        shipped_exactly(&agg, "h", &f),
        "the file is whole after the replay"
    );
    // Replaying again is harmless.
    let (code, out, _) = run_bin(
        "agent",
        &["--config", &cfg_s, "dead-letters", "replay"],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(code, 0);
    assert!(out.contains("# delivered 0, left 0"), "{out}");
}

/// The first flight of a real TLS client: a ClientHello for `localhost`.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.dir.join("ca.pem")).expect("read ca");
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.expect("cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(
        Arc::new(config),
        "localhost".try_into().expect("server name"),
    )
    .expect("client connection");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("client hello");
    hello
}

#[test]
fn garbage_and_half_open_handshakes_do_not_stop_ruok() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate(&dir.path().join("pki"));
    let agg = Aggregator::with_config(
        dir.path(),
        &format!(
            "max_connections_per_client = 1000\n{}",
            pki.server_toml("server", false)
        ),
    );
    let hello = client_hello(&pki);
    let mut held = Vec::new();
    for i in 0..200 {
        let mut s = std::net::TcpStream::connect(agg.addr()).expect("connect");
        if i % 2 == 0 {
            let junk: Vec<u8> = (0..300).map(|_| fastrand::u8(..)).collect();
            let _ = s.write_all(&junk);
        } else {
            s.write_all(&hello).expect("hello");
        }
        held.push(s);
    }
    let client = pki.client(false);
    for _ in 0..5 {
        let t = Instant::now();
        let a = get_via(&client, &agg.url("/ruok"));
        assert_eq!(a.status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "/ruok took {:?} beside 200 bad handshakes",
            t.elapsed()
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            let m = get_via(&client, &agg.url("/metrics")).text();
            metric(&m, "aggregator_tls_handshake_failures_total") >= 100.0
        }),
        "the garbage handshakes were not counted as failures"
    );
    drop(held);
}

#[test]
fn a_reload_swaps_the_certificate_for_new_connections_and_keeps_open_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // Two unrelated CAs: the aggregator starts with A's certificate and is reloaded with B's.
    let (a, b) = (Pki::generate(&d.join("a")), Pki::generate(&d.join("b")));
    let live = d.join("live");
    std::fs::create_dir_all(&live).expect("mkdir");
    let install = |pki: &Pki| {
        for f in ["server.pem", "server.key"] {
            std::fs::copy(pki.dir.join(f), live.join(f)).expect("copy");
        }
    };
    install(&a);
    let agg = Aggregator::with_config(
        d,
        &format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            live.join("server.pem").to_string_lossy(),
            live.join("server.key").to_string_lossy()
        ),
    );
    let post_lines = |client: &ureq::Agent, start: u64, n: u64| {
        let mut w = logship_wire::compact::Writer::new("h", "/live.log", "g", start);
        for i in start..start + n {
            w.push(format!("line {i}").as_bytes(), false);
        }
        let r = client
            .post(&agg.url("/store/batch"))
            .set("Content-Type", logship_wire::COMPACT_CONTENT_TYPE)
            .send_bytes(&w.finish())
            .expect("post");
        assert_eq!(r.status(), 200);
    };
    post_lines(&a.client(false), 0, 10);
    // A live tail open over a connection that negotiated A's certificate.
    let follower = Follower::open_with(
        &a.client(false),
        &agg.url("/store/log?host=h&file=/live.log&follow=true"),
    );
    assert_eq!(follower.status, 200);
    assert!(wait_until(Duration::from_secs(10), || follower
        .text()
        .contains("line 9\n")));

    install(&b);
    agg.proc.signal("HUP");
    // New connections get B's certificate: a fresh client trusting only B gets through, a
    // fresh one trusting only A no longer does.
    assert!(
        wait_until(Duration::from_secs(10), || try_get_via(
            &b.client(false),
            &agg.url("/ruok")
        )
        .is_ok()),
        "the new certificate was not served after SIGHUP"
    );
    assert!(try_get_via(&a.client(false), &agg.url("/ruok")).is_err());
    // The connection opened before the reload is still served: new lines reach it.
    post_lines(&b.client(false), 10, 10);
    assert!(
        wait_until(Duration::from_secs(10), || follower
            .text()
            .contains("line 19\n")),
        "the live tail opened before the reload stopped: {:?}",
        follower.text()
    );
}
