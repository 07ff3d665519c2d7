//! Issue 33 (out): Loki's query API over what is stored, in the request shapes Grafana's Loki
//! data source sends (the "Save & test" health check, Explore's `query_range` with
//! `direction=backward`, the label browser's `labels`, `label/<name>/values` and `series`)
//! and the response shapes of Loki's documented HTTP API; live tail over a WebSocket.

use std::time::{Duration, Instant};

use logship_e2e::*;

const T0: u64 = 1_790_000_000_000_000_000;

/// Stores three streams: two pushed (with their times) and one shipped by our own form.
fn stored_on(backend: &Backend) -> (tempfile::TempDir, Aggregator) {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = backend.aggregator(dir.path(), "", &[]);
    let values = |lines: &[&str], step_ms: u64| -> String {
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!(r#"["{}","{l}"]"#, T0 + i as u64 * step_ms * 1_000_000))
            .collect::<Vec<_>>()
            .join(",")
    };
    let body = format!(
        r#"{{"streams":[{{"stream":{{"host":"web-1","job":"nginx","env":"prod"}},"values":[{}]}},{{"stream":{{"host":"web-2","job":"nginx","env":"dev"}},"values":[{}]}}]}}"#,
        values(
            &[
                "GET / 200",
                "upstream error: connection refused",
                "GET /api 200",
                "upstream error: timeout",
                "upstream error: reset by peer",
                "GET /health 200",
            ],
            1000
        ),
        values(&["dev error one", "dev fine"], 1000)
    );
    let a = post(
        &agg.url("/loki/api/v1/push"),
        body.as_bytes(),
        &[("Content-Type", "application/json")],
    );
    assert_eq!(a.status, 204, "{}", a.text());
    let a = post_compact(
        &agg,
        "db-1",
        "/var/log/postgresql.log",
        "g1",
        0,
        &[b"checkpoint starting", b"error: deadlock detected"],
    );
    assert_eq!(a.status, 200, "{}", a.text());
    (dir, agg)
}

fn stored() -> (tempfile::TempDir, Aggregator) {
    stored_on(&Backend::sled())
}

fn loki(agg: &Aggregator, path_and_query: &str) -> serde_json::Value {
    let a = get(&agg.url(path_and_query));
    assert_eq!(a.status, 200, "{path_and_query}: {}", a.text());
    let v = a.json();
    assert_eq!(v["status"], "success", "{v}");
    v["data"].clone()
}

fn lines_of(result: &serde_json::Value) -> Vec<(String, String)> {
    result
        .as_array()
        .expect("result")
        .iter()
        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
        .map(|v| {
            (
                v[0].as_str().expect("ns").to_owned(),
                v[1].as_str().expect("line").to_owned(),
            )
        })
        .collect()
}

logship_e2e::both_backends!(
    grafana_health_check_labels_series_and_explore_queries_get_lokis_shapes
);

fn grafana_health_check_labels_series_and_explore_queries_get_lokis_shapes(backend: Backend) {
    let (_dir, agg) = stored_on(&backend);
    // "Save & test".
    let d = loki(
        &agg,
        "/loki/api/v1/query?query=vector(1)%2Bvector(1)&time=1790000000",
    );
    assert_eq!(d["resultType"], "vector");
    assert_eq!(d["result"][0]["value"][1], "2");
    // The label browser.
    let labels = loki(
        &agg,
        &format!("/loki/api/v1/labels?start={T0}&end={}", T0 + 1),
    );
    for name in ["env", "filename", "host", "job"] {
        assert!(
            labels.as_array().expect("list").iter().any(|l| l == name),
            "{name}: {labels}"
        );
    }
    let hosts = loki(&agg, "/loki/api/v1/label/host/values");
    assert_eq!(hosts, serde_json::json!(["db-1", "web-1", "web-2"]));
    let envs = loki(
        &agg,
        &format!(
            "/loki/api/v1/label/env/values?query={}",
            enc("{job=\"nginx\"}")
        ),
    );
    assert_eq!(envs, serde_json::json!(["dev", "prod"]));
    let series = loki(
        &agg,
        &format!("/loki/api/v1/series?match[]={}", enc("{env=\"prod\"}")),
    );
    assert_eq!(
        series,
        serde_json::json!([{"host": "web-1", "filename": "nginx", "job": "nginx", "env": "prod"}])
    );
    // Explore: backward, a line filter chain, a limit.
    let q = enc(r#"{job="nginx", host=~"web-.*"} |= "error" != "timeout""#);
    let d = loki(
        &agg,
        &format!("/loki/api/v1/query_range?direction=backward&limit=2&query={q}&start={T0}&end={}&step=1", T0 + 60_000_000_000),
    );
    assert_eq!(d["resultType"], "streams");
    assert_eq!(d["result"][0]["stream"]["host"], "web-1");
    assert_eq!(
        lines_of(&d["result"]),
        [
            (
                (T0 + 4_000_000_000).to_string(),
                "upstream error: reset by peer".to_string()
            ),
            (
                (T0 + 1_000_000_000).to_string(),
                "upstream error: connection refused".to_string()
            ),
        ],
        "the two newest matches, newest first, with the times they were pushed with"
    );
    // Forward, the oldest first; the window excludes what came before `start`.
    let d = loki(
        &agg,
        &format!(
            "/loki/api/v1/query_range?direction=forward&limit=10&query={}&start={}&end={}",
            enc(r#"{env=~"prod|dev"} |~ "error|fine""#),
            T0 + 500_000_000,
            T0 + 60_000_000_000
        ),
    );
    let got: Vec<String> = lines_of(&d["result"]).into_iter().map(|(_, l)| l).collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(
        got.contains(&"dev fine".to_string()) && !got.contains(&"dev error one".to_string()),
        "{got:?}"
    );
    // A file shipped by our own agent form is a stream too, by its file name.
    let d = loki(
        &agg,
        &format!(
            "/loki/api/v1/query_range?query={}&start=0",
            enc(r#"{filename=~"/var/log/.*"} |= "deadlock""#)
        ),
    );
    assert_eq!(lines_of(&d["result"]).len(), 1);
    assert_eq!(d["result"][0]["stream"]["host"], "db-1");
}

#[test]
fn queries_outside_the_subset_are_refused_saying_what_is_supported() {
    let (_dir, agg) = stored();
    for q in [
        r#"rate({host="web-1"}[5m])"#,
        r#"{host="web-1"} | json"#,
        r#"{host=~".*"}"#,
        "",
    ] {
        let a = get(&agg.url(&format!("/loki/api/v1/query_range?query={}", enc(q))));
        assert_eq!(a.status, 400, "{q}: {}", a.text());
        let msg = a.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            msg.contains("supported") || msg.contains("matcher") || msg.contains("missing"),
            "{q}: {msg}"
        );
    }
    let a = get(&agg.url("/loki/api/v1/nothing"));
    assert_eq!(a.status, 404, "{}", a.text());
}

/// Opens a tail; the first message it sends when one comes within 200 ms polls.
fn open_tail(agg: &Aggregator, query: &str) -> Tail {
    let url = format!("ws://{}/loki/api/v1/tail?{query}", agg.addr());
    let (ws, resp) = tungstenite::connect(url.as_str()).expect("websocket");
    assert_eq!(resp.status().as_u16(), 101);
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
    }
    ws
}

type Tail = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

/// The next text message of a tail within `wait` (reads time out every 200 ms), if any.
fn next_text(ws: &mut Tail, wait: Duration) -> Option<serde_json::Value> {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                return Some(serde_json::from_str(t.as_str()).expect("json"))
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("websocket: {e}"),
        }
    }
    None
}

#[test]
fn a_tail_first_sends_the_newest_matching_lines_since_start() {
    let (_dir, agg) = stored();
    let mut ws = open_tail(
        &agg,
        &format!(
            "query={}&start={T0}&limit=2",
            enc(r#"{host="web-1"} |= "upstream""#)
        ),
    );
    let v = next_text(&mut ws, Duration::from_secs(10)).expect("a backlog within 10 s");
    let lines: Vec<&str> = v["streams"][0]["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|e| e[1].as_str().expect("line"))
        .collect();
    assert_eq!(
        lines,
        ["upstream error: timeout", "upstream error: reset by peer"],
        "the newest two since start, oldest first"
    );
    let _ = ws.close(None);
}

#[test]
fn live_tail_over_a_websocket_sends_new_matching_lines() {
    let (_dir, agg) = stored();
    let mut ws = open_tail(
        &agg,
        &format!("query={}", enc(r#"{host="web-1"} |= "live""#)),
    );
    let push = |values: &str| {
        let body = format!(
            r#"{{"streams":[{{"stream":{{"host":"web-1","job":"nginx","env":"prod"}},"values":[{values}]}}]}}"#
        );
        let a = post(
            &agg.url("/loki/api/v1/push"),
            body.as_bytes(),
            &[("Content-Type", "application/json")],
        );
        assert_eq!(a.status, 204, "{}", a.text());
    };
    // Lines the tail sent, read for at most `wait`.
    // Lines the tail sent in its next message within `wait`.
    let mut read = |wait: Duration| -> Vec<String> {
        let mut seen = Vec::new();
        if let Some(v) = next_text(&mut ws, wait) {
            for s in v["streams"].as_array().expect("streams") {
                assert_eq!(s["stream"]["host"], "web-1");
                for e in s["values"].as_array().expect("values") {
                    seen.push(e[1].as_str().expect("line").to_owned());
                }
            }
        }
        seen
    };
    // The tail starts at the streams' ends once it has looked at them: probe until a line
    // pushed after that comes through.
    let mut n = 0u64;
    let started = wait_until(Duration::from_secs(10), || {
        n += 1;
        push(&format!(
            r#"["{}","live probe {n}"]"#,
            T0 + 50_000_000_000 + n
        ));
        !read(Duration::from_millis(300)).is_empty()
    });
    assert!(started, "the tail sent nothing");
    // Late probes may still arrive; what matters is what follows them.
    push(&format!(
        r#"["{}","live one"],["{}","not shown"],["{}","live two"]"#,
        T0 + 100_000_000_000,
        T0 + 101_000_000_000,
        T0 + 102_000_000_000
    ));
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && Instant::now() < deadline {
        seen.extend(
            read(Duration::from_millis(500))
                .into_iter()
                .filter(|l| !l.starts_with("live probe")),
        );
    }
    assert_eq!(seen, ["live one", "live two"]);
    let _ = ws.close(None);
}
