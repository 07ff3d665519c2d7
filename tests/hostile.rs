//! Issue 5 (part): hostile HTTP input, table-driven. Every bad request gets the right 4xx
//! (never a 5xx, a hang or a reset) with a JSON error; `/ruok` answers throughout; what was
//! stored before is unchanged after.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use logship_e2e::*;

/// Sends raw bytes, reads the whole answer (the request asks the server to close).
fn raw(addr: &str, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    // A reset instead of an answer is a failure too: the server must read what it refuses.
    if let Err(e) = s.read_to_end(&mut out) {
        panic!(
            "{e} after {:?} of the answer to {:?}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&request[..request.len().min(120)])
        );
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Sends one bad request: it must get `want` with a JSON error, and the server keeps serving.
fn answers_json_error(agg: &Aggregator, name: &str, request: &[u8], want: u16) {
    let (status, body) = raw(agg.addr(), request);
    assert_eq!(status, want, "{name}: got {status} {body:?}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {body:?}"));
    assert!(
        v["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{name}: {body}"
    );
    assert_eq!(get(&agg.url("/ruok")).text(), "imok", "after {name}");
}

fn req(method: &str, target: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    }) {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut v = r.into_bytes();
    v.extend_from_slice(body);
    v
}

fn json_post(body: &str) -> Vec<u8> {
    req(
        "POST",
        "/store/batch",
        &[("Content-Type", "application/json".into())],
        body.as_bytes(),
    )
}

fn compact(host: &str, start: u64, lines: &[&[u8]]) -> Vec<u8> {
    let mut w = logship_wire::compact::Writer::new(host, "/f", "g", start);
    for l in lines {
        w.push(l, false);
    }
    w.finish()
}

fn compact_post(body: &[u8], extra: &[(&str, String)]) -> Vec<u8> {
    let mut h = vec![(
        "Content-Type",
        logship_wire::COMPACT_CONTENT_TYPE.to_owned(),
    )];
    h.extend_from_slice(extra);
    req("POST", "/store/batch", &h, body)
}

fn chunked_post(total: usize) -> Vec<u8> {
    let mut v = b"POST /store/batch HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let chunk = vec![b'a'; 4096];
    for _ in 0..total / 4096 {
        v.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        v.extend_from_slice(&chunk);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

#[test]
fn thirty_plus_bad_requests_get_clear_4xx_and_harm_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("a.toml"),
        "max_body_bytes = \"64KiB\"\nmax_decoded_bytes = \"256KiB\"\n",
    )
    .expect("write");
    let agg = Aggregator::start(
        &dir.path().join("data"),
        &["--config", &dir.path().join("a.toml").to_string_lossy()],
    );
    let good: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("stored line {i}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = good.iter().map(Vec::as_slice).collect();
    assert_eq!(post_compact(&agg, "h", "/f", "g", 0, &refs).status, 200);
    let before = agg.log("h", "/f", "").expect("stored");
    let files_before = get(&agg.url("/store/files")).json();

    let bomb = zstd::encode_all(&vec![b'a'; 8 << 20][..], 19).expect("bomb");
    let long_query = format!("/store/files?{}", "x".repeat(10_000));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed JSON", json_post("{not json"), 400),
        (
            "truncated JSON",
            json_post(r#"{"batch":[{"host":"h","file":"/f""#),
            400,
        ),
        (
            "wrong type for host",
            json_post(r#"{"batch":[{"host":5,"file":"/f","line-num":1,"content":"x"}]}"#),
            400,
        ),
        (
            "wrong type for batch",
            json_post(r#"{"batch":"nope"}"#),
            400,
        ),
        (
            "missing content",
            json_post(r#"{"batch":[{"host":"h","file":"/f","line-num":1}]}"#),
            400,
        ),
        ("missing batch", json_post(r#"{"size":0}"#), 400),
        (
            "negative line number",
            json_post(r#"{"batch":[{"host":"h","file":"/f","line-num":-1,"content":"x"}]}"#),
            400,
        ),
        (
            "float line number",
            json_post(r#"{"batch":[{"host":"h","file":"/f","line-num":1.5,"content":"x"}]}"#),
            400,
        ),
        (
            "huge line number",
            json_post(
                r#"{"batch":[{"host":"h","file":"/f","line-num":18446744073709551615,"content":"x"}]}"#,
            ),
            400,
        ),
        (
            "line number past u64",
            json_post(r#"{"batch":[{"host":"h","file":"/f","line-num":1e30,"content":"x"}]}"#),
            400,
        ),
        ("size that lies", json_post(r#"{"size":5,"batch":[]}"#), 400),
        ("unknown field", json_post(r#"{"batch":[],"extra":1}"#), 400),
        (
            "empty host",
            json_post(r#"{"batch":[{"host":"","file":"/f","line-num":1,"content":"x"}]}"#),
            400,
        ),
        (
            "control character in file",
            json_post(r#"{"batch":[{"host":"h","file":"/f\n","line-num":1,"content":"x"}]}"#),
            400,
        ),
        ("empty body", json_post(""), 400),
        (
            "truncated compact",
            compact_post(&compact("h", 0, &[b"abc"])[..20], &[]),
            400,
        ),
        (
            "compact with bad magic",
            compact_post(b"XXXX\x01h", &[]),
            400,
        ),
        (
            "compact with trailing bytes",
            compact_post(
                &[compact("h", 0, &[b"abc"]), b"junk".to_vec()].concat(),
                &[],
            ),
            400,
        ),
        (
            "compact past the largest line",
            compact_post(&compact("h", u64::MAX - 1, &[b"a", b"b"]), &[]),
            400,
        ),
        (
            "body over max_body_bytes",
            compact_post(&vec![b'x'; 100 * 1024], &[]),
            413,
        ),
        (
            "chunked body over max_body_bytes",
            chunked_post(200 * 1024),
            413,
        ),
        (
            "zstd that is not zstd",
            compact_post(
                b"definitely not zstd",
                &[("Content-Encoding", "zstd".into())],
            ),
            400,
        ),
        (
            "gzip that is not gzip",
            compact_post(
                b"definitely not gzip",
                &[("Content-Encoding", "gzip".into())],
            ),
            400,
        ),
        (
            "zstd bomb",
            compact_post(&bomb, &[("Content-Encoding", "zstd".into())]),
            413,
        ),
        (
            "unknown encoding",
            compact_post(
                &compact("h", 0, &[b"a"]),
                &[("Content-Encoding", "br".into())],
            ),
            415,
        ),
        (
            "repeated Content-Encoding",
            compact_post(
                &compact("h", 0, &[b"a"]),
                &[
                    ("Content-Encoding", "gzip".into()),
                    ("Content-Encoding", "zstd".into()),
                ],
            ),
            400,
        ),
        ("unknown route", req("GET", "/nope", &[], b""), 404),
        (
            "unknown route under /store",
            req("GET", "/store/nope", &[], b""),
            404,
        ),
        (
            "DELETE on batch",
            req("DELETE", "/store/batch", &[], b""),
            405,
        ),
        (
            "PUT on log",
            req("PUT", "/store/log?host=h&file=/f", &[], b"x"),
            405,
        ),
        ("POST on hosts", req("POST", "/store/hosts", &[], b""), 405),
        (
            "missing host",
            req("GET", "/store/log?file=/f", &[], b""),
            400,
        ),
        (
            "missing file",
            req("GET", "/store/log?host=h", &[], b""),
            400,
        ),
        (
            "empty host parameter",
            req("GET", "/store/log?host=&file=/f", &[], b""),
            400,
        ),
        (
            "repeated parameter",
            req("GET", "/store/log?host=h&host=i&file=/f", &[], b""),
            400,
        ),
        (
            "unknown parameter",
            req("GET", "/store/log?host=h&file=/f&colour=red", &[], b""),
            400,
        ),
        (
            "10,000-character query",
            req("GET", &long_query, &[], b""),
            400,
        ),
        (
            "non-numeric from",
            req("GET", "/store/log?host=h&file=/f&from=abc", &[], b""),
            400,
        ),
        (
            "from after to",
            req("GET", "/store/log?host=h&file=/f&from=9&to=3", &[], b""),
            400,
        ),
        (
            "tail with from",
            req("GET", "/store/log?host=h&file=/f&from=1&tail=3", &[], b""),
            400,
        ),
        (
            "bad follow value",
            req("GET", "/store/log?host=h&file=/f&follow=maybe", &[], b""),
            400,
        ),
        (
            "unknown file",
            req("GET", "/store/log?host=h&file=/missing", &[], b""),
            404,
        ),
        (
            "unknown generation",
            req("GET", "/store/log?host=h&file=/f&generation=zzz", &[], b""),
            404,
        ),
    ];
    assert!(cases.len() >= 30);
    for (name, request, want) in &cases {
        answers_json_error(&agg, name, request, *want);
    }

    // Framing errors hyper rejects before routing: still the right 4xx with a JSON error.
    let huge_header = req("GET", "/ruok", &[("X-Huge", "h".repeat(200 * 1024))], b"");
    let framing: [(&str, Vec<u8>, u16); 4] = [
        ("huge header", huge_header, 431),
        (
            "unparsable Content-Length",
            b"GET /ruok HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n".to_vec(),
            400,
        ),
        (
            "two different Content-Lengths",
            b"POST /store/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"
                .to_vec(),
            400,
        ),
        ("not HTTP", b"HELLO THERE\r\n\r\n".to_vec(), 400),
    ];
    for (name, request, want) in &framing {
        answers_json_error(&agg, name, request, *want);
    }
    // A body shorter than its Content-Length, then the client goes away.
    {
        let mut s = TcpStream::connect(agg.addr()).expect("connect");
        s.write_all(b"POST /store/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nshort")
            .expect("send");
    }
    // A download the client stops reading: others are served meanwhile.
    let big: Vec<Vec<u8>> = (0..20_000)
        .map(|i| format!("{i:0>100}").into_bytes())
        .collect();
    for (i, chunk) in big.chunks(500).enumerate() {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        assert_eq!(
            post_compact(&agg, "h", "/big", "g", (i * 500) as u64, &refs).status,
            200
        );
    }
    let mut stalled = TcpStream::connect(agg.addr()).expect("connect");
    stalled
        .write_all(b"GET /store/log?host=h&file=/big HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    for _ in 0..5 {
        assert_eq!(
            get(&agg.url("/ruok")).text(),
            "imok",
            "while a download is stalled"
        );
    }
    drop(stalled);

    assert_eq!(
        agg.log("h", "/f", "").expect("still stored"),
        before,
        "stored data unchanged"
    );
    assert_eq!(
        get(&agg.url("/store/files?host=h")).json()["files"][0],
        files_before["files"][0]
    );
}

#[test]
fn slow_headers_get_a_408_and_idle_connections_close_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.toml"), "header_read_timeout = \"1s\"\n").expect("write");
    let agg = Aggregator::start(
        &dir.path().join("data"),
        &["--config", &dir.path().join("a.toml").to_string_lossy()],
    );
    let mut s = TcpStream::connect(agg.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /ruok HTTP/1.1\r\nHost: x\r\n")
        .expect("partial headers");
    assert_eq!(
        get(&agg.url("/ruok")).text(),
        "imok",
        "others are served meanwhile"
    );
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slow client held for {:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408 "), "answered {text:?}");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON error");
    assert!(v["error"]
        .as_str()
        .is_some_and(|m| m.contains("header_read_timeout")));

    // A keep-alive connection that finished its request and then sits idle is closed at the
    // same timeout without an answer: there is no request to answer.
    let mut idle = TcpStream::connect(agg.addr()).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    idle.write_all(b"GET /ruok HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut first = [0u8; 4096];
    let n = idle.read(&mut first).expect("answer");
    assert!(String::from_utf8_lossy(&first[..n]).ends_with("imok"));
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "idle connection got {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// Issue 11.14: the bearer scheme is case-insensitive, two `Authorization` headers are a 400,
/// and a 401 says which scheme to use.
#[test]
fn auth_scheme_is_case_insensitive_and_two_authorization_headers_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(dir.path(), "[auth]\nwrite_tokens = [\"w1\", \"w2\"]\n");
    let body = compact("h", 0, &[b"x"]);
    for (n, auth) in ["bearer w1", "BEARER w2", "Bearer  w1 "].iter().enumerate() {
        let body = compact("h", n as u64, &[b"x"]);
        let (status, text) = raw(
            agg.addr(),
            &compact_post(&body, &[("Authorization", (*auth).into())]),
        );
        assert_eq!(status, 200, "{auth:?}: {text}");
    }
    for auth in ["Basic w1", "Bearer w3", "Bearerw1", "w1"] {
        let a = post(
            &agg.url("/store/batch"),
            &body,
            &[
                ("Authorization", auth),
                ("Content-Type", logship_wire::COMPACT_CONTENT_TYPE),
            ],
        );
        assert_eq!(a.status, 401, "{auth:?}");
        assert_eq!(a.header("www-authenticate"), Some("Bearer"), "{auth:?}");
    }
    answers_json_error(
        &agg,
        "two Authorization headers",
        &compact_post(
            &body,
            &[
                ("Authorization", "Bearer w1".into()),
                ("Authorization", "Bearer w3".into()),
            ],
        ),
        400,
    );
}
