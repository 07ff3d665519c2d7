//! Issue 34.1–34.2: the agent's `loki` and `otlp` sinks. Files shipped through each to the
//! aggregator's own Loki and OTLP endpoints download byte-identical; and a receiver written
//! here in Python decodes what the agent sends with the protocols' own schemas (the
//! `opentelemetry-proto` package's compiled OTLP classes; Loki's push message declared from
//! its field numbers, snappy from `python-snappy`), including a batch refused once and sent
//! again with the very same times.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use logship_e2e::*;

/// An agent config shipping `logs/*.log` as `host` through a sink of `kind` at `url`, with
/// the sink's own keys in `sink_extra`.
fn sink_config(
    dir: &Path,
    host: &str,
    kind: &str,
    url: &str,
    sink_extra: &str,
) -> std::path::PathBuf {
    let text = format!(
        "host = {host:?}\nstate_dir = {:?}\npoll_interval = \"500ms\"\n\n[sink]\ntype = {kind:?}\nurl = {url:?}\n{sink_extra}\n\n[defaults]\nlinger = \"50ms\"\nretry = {{ initial = \"20ms\", max = \"300ms\" }}\n\n[[sources]]\npaths = [{:?}]\n",
        dir.join("state").to_string_lossy(),
        dir.join("logs").join("*.log").to_string_lossy(),
    );
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).expect("write agent config");
    p
}

#[test]
fn files_shipped_through_the_loki_and_otlp_sinks_download_byte_identical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(dir.path(), "");
    // Loki's JSON form (gzip) goes through the aggregator's JSON push path.
    for (label, kind, path, extra) in [
        (
            "loki",
            "loki",
            "/loki/api/v1/push",
            "labels = { job = \"app\" }\n",
        ),
        (
            "loki-json",
            "loki",
            "/loki/api/v1/push",
            "format = \"json\"\nlabels = { job = \"app\" }\n",
        ),
        ("otlp", "otlp", "/v1/logs", "compression = \"gzip\"\n"),
    ] {
        let d = dir.path().join(label);
        let files = write_logs(&d, 2, 3_000);
        let cfg = sink_config(&d, &format!("{label}-host"), kind, &agg.url(path), extra);
        let _agent = Agent::start(&cfg);
        // The Loki stream keeps its job label in the stored name; OTLP's file is the path.
        let name = |p: &Path| match kind {
            "loki" => format!("{}{{job=\"app\"}}", p.display()),
            _ => p.display().to_string(),
        };
        let kind = label;
        let exact =
            |p: &Path| agg.log(&format!("{kind}-host"), &name(p), "").ok() == std::fs::read(p).ok();
        assert!(
            wait_until(Duration::from_secs(30), || files.iter().all(|p| exact(p))),
            "{kind}: not shipped exactly; files: {}; first file as stored begins {:?}",
            get(&agg.url("/store/files")).text(),
            agg.log(&format!("{kind}-host"), &name(&files[0]), "")
                .map(|b| String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned())
        );
        // Appends keep flowing, in order.
        for (f, p) in files.iter().enumerate() {
            append_lines(p, &format!("f{f}"), 3_000..3_500);
        }
        assert!(
            wait_until(Duration::from_secs(30), || files.iter().all(|p| exact(p))),
            "{kind}: appends not shipped exactly"
        );
    }
}

/// A Loki and OTLP receiver: decodes each body with the protocol's schema, refuses the
/// first request of each kind with a 500, and prints one JSON line per entry received:
/// `{"kind", "labels", "ts", "line", "attempt"}`.
const RECEIVER: &str = r#"
import sys, gzip, json, snappy, http.server, threading
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

lock = threading.Lock()
seen = {"loki": 0, "otlp": 0}

class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        kind = "loki" if self.path.startswith("/loki") else "otlp"
        with lock:
            seen[kind] += 1
            attempt = seen[kind]
        out = []
        if kind == "loki":
            assert self.headers["Content-Type"] == "application/x-protobuf"
            assert self.headers["X-Scope-OrgID"] == "team-a", self.headers
            req = PushRequest.FromString(snappy.uncompress(body))
            for s in req.streams:
                for e in s.entries:
                    out.append({"kind": kind, "labels": s.labels, "line": e.line,
                                "ts": e.timestamp.seconds * 10**9 + e.timestamp.nanos, "attempt": attempt})
        else:
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            req = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
            for rl in req.resource_logs:
                attrs = {kv.key: kv.value.string_value for kv in rl.resource.attributes}
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        out.append({"kind": kind, "labels": attrs, "line": r.body.string_value,
                                    "ts": r.time_unix_nano, "attempt": attempt})
        with lock:
            for o in out:
                print(json.dumps(o), flush=True)
        if attempt == 1:
            self.send_response(500)
            self.end_headers()
            return
        if kind == "loki":
            self.send_response(204)
            self.end_headers()
        else:
            resp = logs_service_pb2.ExportLogsServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(resp)))
            self.end_headers()
            self.wfile.write(resp)

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(json.dumps({"port": server.server_address[1]}), flush=True)
server.serve_forever()
"#;

#[test]
fn a_receiver_with_the_protocols_own_schemas_reads_what_the_sinks_send() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("receiver.py");
    std::fs::write(&script, format!("{LOKI_PUSH_SCHEMA_PY}{RECEIVER}")).expect("write receiver");
    let child = Command::new(python_clients())
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the receiver");
    let mut receiver = Proc {
        child,
        name: "receiver",
    };
    let stdout = receiver.child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the receiver's port")["port"]
        .as_u64()
        .expect("port");
    let mut agents = Vec::new();
    for (kind, path, extra) in [
        ("loki", "/loki/api/v1/push", "tenant = \"team-a\"\n"),
        (
            "otlp",
            "/v1/logs",
            "attributes = { \"service.name\" = \"shop\" }\ncompression = \"gzip\"\n",
        ),
    ] {
        let d = dir.path().join(kind);
        write_logs(&d, 1, 100);
        let url = format!("http://127.0.0.1:{port}{path}");
        agents.push(Agent::start(&sink_config(&d, "web-7", kind, &url, extra)));
    }
    // Every line of both, the first batch of each twice (refused once, then sent again).
    let mut got: Vec<serde_json::Value> = Vec::new();
    let done = |got: &[serde_json::Value], kind: &str| {
        got.iter()
            .filter(|v| v["kind"] == kind && v["attempt"].as_u64() > Some(1))
            .count()
            >= 100
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(done(&got, "loki") && done(&got, "otlp")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) => got.push(v),
            Err(_) => panic!("not every line arrived: {} entries", got.len()),
        }
    }
    for kind in ["loki", "otlp"] {
        let entries: Vec<&serde_json::Value> = got.iter().filter(|v| v["kind"] == kind).collect();
        let first: Vec<(String, u64)> = entries
            .iter()
            .filter(|v| v["attempt"] == 1)
            .map(|v| {
                (
                    v["line"].as_str().expect("line").to_owned(),
                    v["ts"].as_u64().expect("ts"),
                )
            })
            .collect();
        assert!(!first.is_empty(), "{kind}: the refused request held lines");
        // The retry carries the same lines with the very same times.
        for (line, ts) in &first {
            assert!(
                entries.iter().any(|v| v["attempt"].as_u64() > Some(1)
                    && v["line"] == line.as_str()
                    && v["ts"].as_u64() == Some(*ts)),
                "{kind}: {line:?} was not sent again with time {ts}"
            );
        }
        let delivered: Vec<String> = entries
            .iter()
            .filter(|v| v["attempt"].as_u64() > Some(1))
            .map(|v| v["line"].as_str().expect("line").to_owned())
            .collect();
        let want: Vec<String> =
            std::fs::read_to_string(dir.path().join(kind).join("logs").join("app0.log"))
                .expect("source")
                .lines()
                .map(str::to_owned)
                .collect();
        assert_eq!(delivered, want, "{kind}: every line once, in order");
        let labels = &entries[0]["labels"];
        let file = dir.path().join(kind).join("logs").join("app0.log");
        match kind {
            "loki" => assert_eq!(
                labels.as_str().expect("labels"),
                format!("{{filename=\"{}\", host=\"web-7\"}}", file.display())
            ),
            _ => {
                assert_eq!(labels["host.name"], "web-7");
                assert_eq!(labels["log.file.path"], file.display().to_string());
                assert_eq!(labels["log.file.name"], "app0.log");
                assert_eq!(labels["service.name"], "shop");
            }
        }
    }
    drop(agents);
}
