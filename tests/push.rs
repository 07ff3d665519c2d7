//! Issue 33 (in): the aggregator takes Loki pushes and OTLP/HTTP logs from clients nobody
//! here wrote — the OpenTelemetry Python SDK's exporter, python-logging-loki, and protobuf +
//! snappy bodies built by the `protobuf` and `python-snappy` libraries — stores each stream
//! under a host and file with the sender's times, and stores a resent push once, across a
//! restart too. Hostile pushes get a 4xx that says what was wrong.

use std::time::Duration;

use logship_e2e::*;

const PY_TIMEOUT: Duration = Duration::from_secs(120);

/// A line's time in an NDJSON download (RFC 3339 with ms), as ms since the epoch.
fn ts_ms(v: &serde_json::Value) -> u64 {
    let text = v["ts"].as_str().unwrap_or_else(|| panic!("no ts in {v}"));
    let t = humantime::parse_rfc3339(text).expect("RFC 3339 time");
    t.duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// Exports `count` records through the OpenTelemetry SDK's OTLP/HTTP (protobuf) exporter,
/// each with an explicit time; prints the times (ns) it gave, one per line.
const OTEL_SDK: &str = r#"
import sys
from opentelemetry._logs import LogRecord
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk.resources import Resource

url, token, count, start_ns = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
resource = Resource.create({"host.name": "web-1", "service.name": "checkout",
                            "deployment.environment": "prod"})
provider = LoggerProvider(resource=resource)
exporter = OTLPLogExporter(endpoint=url, headers={"Authorization": "Bearer " + token}, timeout=10)
provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
logger = provider.get_logger("shop")
for i in range(count):
    ts = start_ns + i * 1_000_000
    body = "order %d placed by user-%d total=%d.%02d EUR" % (i, i * 7 % 101, i * 13, i % 100)
    if i == 3:
        body = {"order": i, "items": ["book", "pen"]}
    logger.emit(LogRecord(timestamp=ts, body=body, attributes={"order.id": i}))
    print(ts)
provider.shutdown()
"#;

#[test]
fn records_from_the_opentelemetry_sdk_are_stored_with_their_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(dir.path(), "[auth]\nwrite_tokens = [\"s3cret\"]\n");
    let start_ns: u64 = 1_790_000_000_000_000_000;
    let printed = run_python(
        OTEL_SDK,
        &[&agg.url("/v1/logs"), "s3cret", "40", &start_ns.to_string()],
        PY_TIMEOUT,
    );
    assert_eq!(printed.lines().count(), 40);
    // service.name names the file and, like deployment.environment (in `otlp_labels`), stays
    // in the name as a label; the SDK's telemetry.sdk.* attributes are not kept.
    let file = "checkout{deployment.environment=\"prod\", service.name=\"checkout\"}";
    let got = agg.log("web-1", file, "").expect("download");
    let text = String::from_utf8(got).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 40, "{text}");
    assert_eq!(lines[0], "order 0 placed by user-0 total=0.00 EUR");
    // A body that is not a string is stored as its JSON (keys in sorted order).
    assert_eq!(lines[3], r#"{"items":["book","pen"],"order":3}"#);
    assert_eq!(lines[39], "order 39 placed by user-71 total=507.39 EUR");
    let nd = agg.log("web-1", file, "&format=ndjson").expect("ndjson");
    let times: Vec<u64> = String::from_utf8_lossy(&nd)
        .lines()
        .map(|l| ts_ms(&serde_json::from_str(l).expect("json")))
        .collect();
    let want: Vec<u64> = printed
        .lines()
        .map(|l| l.trim().parse::<u64>().expect("ns") / 1_000_000)
        .collect();
    assert_eq!(times, want, "each line keeps the time the SDK gave it");
    // Without the token: refused.
    let a = post(
        &agg.url("/v1/logs"),
        b"",
        &[("Content-Type", "application/x-protobuf")],
    );
    assert_eq!(a.status, 401, "{}", a.text());
}

/// Builds a Loki `PushRequest` with the `protobuf` library (its schema declared from the
/// field names and numbers of Loki's `push.proto`), compresses it with `python-snappy`, and
/// writes the body to a file: two streams of `count` entries each.
const LOKI_PROTOBUF: &str = r#"
import sys, snappy


out, count, start_ns, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
req = PushRequest()
for labels, fmt in [('{host="web-3", filename="/var/log/app.log", env="prod"}',
                     '10.1.%d.%d - - "GET /api/items/%d HTTP/1.1" 200 %d'),
                    ('{host="web-3", job="worker"}', 'job=%d worker=%d processed %d items in %dms')]:
    s = req.streams.add(labels=labels)
    for i in range(first, first + count):
        e = s.entries.add(line=fmt % (i % 256, i % 7, i, i * 31 % 5000))
        e.timestamp.seconds = (start_ns + i * 1_000_000) // 1_000_000_000
        e.timestamp.nanos = (start_ns + i * 1_000_000) % 1_000_000_000
        if i % 10 == 0:
            e.structuredMetadata.add(name="trace_id", value="%032x" % i)
open(out, "wb").write(snappy.compress(req.SerializeToString()))
"#;

/// python-logging-loki's handler (JSON pushes, basic auth) logging `count` messages.
const LOGGING_LOKI: &str = r#"
import sys, logging, logging_loki
url, token, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
handler = logging_loki.LokiHandler(url=url, tags={"host": "web-2", "job": "billing"},
                                   auth=("fleet", token), version="1")
log = logging.getLogger("billing")
log.setLevel(logging.INFO)
log.addHandler(handler)
for i in range(count):
    log.info("invoice %d sent to customer-%d", i, i * 3)
"#;

fn loki_body(dir: &std::path::Path, name: &str, count: u64, first: u64) -> Vec<u8> {
    let path = dir.join(name);
    run_python(
        &format!("{LOKI_PUSH_SCHEMA_PY}{LOKI_PROTOBUF}"),
        &[
            path.to_str().expect("utf-8 path"),
            &count.to_string(),
            "1790000000000000000",
            &first.to_string(),
        ],
        PY_TIMEOUT,
    );
    std::fs::read(&path).expect("body written")
}

fn push_protobuf(agg: &Aggregator, body: &[u8]) -> Answer {
    post(
        &agg.url("/loki/api/v1/push"),
        body,
        &[("Content-Type", "application/x-protobuf")],
    )
}

fn lines_of(agg: &Aggregator, host: &str, file: &str) -> Vec<String> {
    let got = agg.log(host, file, "").unwrap_or_default();
    String::from_utf8_lossy(&got)
        .lines()
        .map(str::to_owned)
        .collect()
}

const APP_LOG: &str = "/var/log/app.log{env=\"prod\"}";
/// A stream named by its `job` only: the job names the file and stays a label in the name.
const WORKER: &str = "worker{job=\"worker\"}";
const JOB_J: &str = "j{job=\"j\"}";

logship_e2e::both_backends!(loki_pushes_are_stored_once_even_when_resent_and_after_a_restart);

fn loki_pushes_are_stored_once_even_when_resent_and_after_a_restart(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = loki_body(dir.path(), "first", 500, 0);
    let overlapping = loki_body(dir.path(), "overlap", 500, 250);
    let node = dir.path().join("node");
    let mut agg = backend.aggregator(&node, "", &[]);
    let a = push_protobuf(&agg, &first);
    assert_eq!(a.status, 204, "{}", a.text());
    let stored = lines_of(&agg, "web-3", APP_LOG);
    assert_eq!(stored.len(), 500);
    assert_eq!(
        stored[7],
        "10.1.7.0 - - \"GET /api/items/7 HTTP/1.1\" 200 217"
    );
    assert_eq!(lines_of(&agg, "web-3", WORKER).len(), 500);
    // The client timed out and sends the same push again: nothing is stored twice.
    let a = push_protobuf(&agg, &first);
    assert_eq!(a.status, 204, "{}", a.text());
    let again = lines_of(&agg, "web-3", APP_LOG);
    assert_eq!(again.len(), 500, "a resent push was stored again");
    assert!(again == stored, "a resent push changed the stored lines");
    let m = get(&agg.url("/metrics")).text();
    assert_eq!(
        metric(&m, "aggregator_push_duplicates_total{protocol=\"loki\"}"),
        1000.0
    );
    // After a restart the windows are read back from the store: a push overlapping the
    // first by half stores only its new half, in order.
    agg.proc.kill9();
    drop(agg);
    let agg = backend.aggregator(&node, "", &[]);
    let a = push_protobuf(&agg, &overlapping);
    assert_eq!(a.status, 204, "{}", a.text());
    let after = lines_of(&agg, "web-3", APP_LOG);
    assert_eq!(after.len(), 750, "250 new lines after 500");
    assert!(after[..500] == stored[..], "the first 500 lines changed");
    assert_eq!(
        after[749],
        "10.1.237.0 - - \"GET /api/items/749 HTTP/1.1\" 200 3219"
    );
    let worker = lines_of(&agg, "web-3", WORKER);
    assert_eq!(worker.len(), 750);
    assert_eq!(worker[600], "job=88 worker=5 processed 600 items in 3600ms");
    // Every line keeps the time it was pushed with.
    let nd = agg.log("web-3", WORKER, "&format=ndjson").expect("ndjson");
    for (i, l) in String::from_utf8_lossy(&nd).lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).expect("json");
        assert_eq!(ts_ms(&v), 1_790_000_000_000 + i as u64, "line {i}");
    }
}

#[test]
fn python_logging_loki_pushes_json_with_basic_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(dir.path(), "[auth]\nwrite_tokens = [\"t0k\"]\n");
    run_python(
        LOGGING_LOKI,
        &[&agg.url("/loki/api/v1/push"), "t0k", "60"],
        PY_TIMEOUT,
    );
    // The handler labels each stream with its logger and level too: they join the name, as
    // does the job that named the file (so {job="billing"} finds it again).
    let file = "billing{job=\"billing\", logger=\"billing\", severity=\"info\"}";
    let lines = lines_of(&agg, "web-2", file);
    assert_eq!(
        lines.len(),
        60,
        "files: {}",
        get(&agg.url("/store/files")).text()
    );
    assert_eq!(lines[59], "invoice 59 sent to customer-177");
    // A wrong password is refused and stores nothing.
    let a = post(
        &agg.url("/loki/api/v1/push"),
        br#"{"streams":[{"stream":{"host":"web-2","job":"billing"},"values":[["1","x"]]}]}"#,
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Basic ZmxlZXQ6d3Jvbmc="),
        ],
    );
    assert_eq!(a.status, 401, "{}", a.text());
}

/// Fluent Bit's `loki` output sends JSON with one stream entry per line, labelled `host`,
/// `job` and `filename` (its shape, sent here by this test; Fluent Bit is not packaged for
/// Debian 12), gzip-compressed; and the OTLP JSON encoding, which no client here speaks.
#[test]
fn fluent_bit_shaped_json_and_otlp_json_are_stored_in_order() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(dir.path(), "");
    let streams: Vec<String> = (0..200)
        .map(|i| {
            format!(
                r#"{{"stream":{{"host":"node-7","job":"fluentbit","filename":"/var/log/syslog"}},"values":[["{}","Dec  7 10:00:{:02} node-7 sshd[{}]: Accepted publickey for deploy\n"]]}}"#,
                1_790_000_000_000_000_000u64 + i * 1_000_000,
                i % 60,
                4000 + i
            )
        })
        .collect();
    let body = format!(r#"{{"streams":[{}]}}"#, streams.join(","));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(body.as_bytes()).expect("gzip");
    let a = post(
        &agg.url("/loki/api/v1/push"),
        &gz.finish().expect("gzip"),
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
        ],
    );
    assert_eq!(a.status, 204, "{}", a.text());
    let lines = lines_of(&agg, "node-7", "/var/log/syslog{job=\"fluentbit\"}");
    assert_eq!(lines.len(), 200);
    assert_eq!(
        lines[123], "Dec  7 10:00:03 node-7 sshd[4123]: Accepted publickey for deploy",
        "the trailing newline is the line's end, not part of it"
    );
    let otlp = br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"host.name","value":{"stringValue":"db-1"}}]},
        "scopeLogs":[{"logRecords":[
          {"timeUnixNano":"1790000000000000000","body":{"stringValue":"checkpoint complete"},"attributes":[{"key":"log.file.path","value":{"stringValue":"/var/log/postgresql.log"}}]},
          {"observedTimeUnixNano":"1790000000001000000","body":{"stringValue":"autovacuum done"},"attributes":[{"key":"log.file.path","value":{"stringValue":"/var/log/postgresql.log"}}]},
          {"timeUnixNano":"1790000000002000000","body":{"stringValue":"x"}}]}]}]}"#;
    let a = post(
        &agg.url("/v1/logs"),
        otlp,
        &[("Content-Type", "application/json")],
    );
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.text(), "{}");
    assert_eq!(
        lines_of(&agg, "db-1", "/var/log/postgresql.log"),
        ["checkpoint complete", "autovacuum done"]
    );
    // A record naming no file goes to the documented fallback: the host's `otlp` file.
    assert_eq!(lines_of(&agg, "db-1", "otlp"), ["x"]);
}

#[test]
fn hostile_pushes_get_a_clear_client_error_and_store_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(
        dir.path(),
        "[limits]\nmax_files_per_request = 1000\nmax_line_bytes = \"1KiB\"\n",
    );
    let loki = agg.url("/loki/api/v1/push");
    let pb = [("Content-Type", "application/x-protobuf")];
    let check = |a: Answer, status: u16, needle: &str| {
        assert_eq!(a.status, status, "{}", a.text());
        let msg = a.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    };
    // A snappy bomb: a few bytes that declare 4 GiB.
    let mut bomb = vec![0x80, 0x80, 0x80, 0x80, 0x0f];
    bomb.extend_from_slice(&[0; 16]);
    check(post(&loki, &bomb, &pb), 413, "max_decoded_bytes");
    // A zstd bomb as Content-Encoding: 1 GiB of zeros in ~32 KB.
    let zeros = vec![0u8; 1 << 30];
    let zbomb = zstd::bulk::compress(&zeros, 3).expect("zstd");
    drop(zeros);
    check(
        post(
            &agg.url("/v1/logs"),
            &zbomb,
            &[
                ("Content-Type", "application/x-protobuf"),
                ("Content-Encoding", "zstd"),
            ],
        ),
        413,
        "max_decoded_bytes",
    );
    // A protobuf whose length prefix claims 2 GB.
    let lie = snap::raw::Encoder::new()
        .compress_vec(&[0x0a, 0x80, 0x80, 0x80, 0x80, 0x08, 1, 2, 3])
        .expect("snappy");
    check(post(&loki, &lie, &pb), 400, "past the end");
    // 100k empty streams in 200 KB.
    let many: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 100_000)
        .flatten()
        .collect();
    let many = snap::raw::Encoder::new()
        .compress_vec(&many)
        .expect("snappy");
    check(post(&loki, &many, &pb), 413, "streams");
    // A label of 1 MB.
    let long = format!(
        r#"{{"streams":[{{"stream":{{"host":"{}"}},"values":[["1","x"]]}}]}}"#,
        "h".repeat(1 << 20)
    );
    check(
        post(
            &loki,
            long.as_bytes(),
            &[("Content-Type", "application/json")],
        ),
        400,
        "at most 2048",
    );
    check(
        post(
            &loki,
            b"{\"streams\": 3}",
            &[("Content-Type", "application/json")],
        ),
        400,
        "streams",
    );
    check(
        post(
            &agg.url("/v1/logs"),
            b"x",
            &[("Content-Type", "text/plain")],
        ),
        415,
        "application/x-protobuf",
    );
    // A line over max_line_bytes is refused alone; the push's other lines are stored.
    let mixed = format!(
        r#"{{"streams":[{{"stream":{{"host":"h","job":"j"}},"values":[["1","ok"],["2","{}"],["3","fine"]]}}]}}"#,
        "x".repeat(2000)
    );
    check(
        post(
            &loki,
            mixed.as_bytes(),
            &[("Content-Type", "application/json")],
        ),
        400,
        "1 entries refused",
    );
    assert_eq!(lines_of(&agg, "h", JOB_J), ["ok", "fine"]);
    let files = get(&agg.url("/store/files")).json();
    assert_eq!(files["files"].as_array().map(Vec::len), Some(1), "{files}");
}

#[test]
fn pushes_are_rate_limited_per_host_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::with_config(dir.path(), "[limits]\nper_host_lines_per_sec = 100\n");
    let body = |n: u64, from: u64| {
        let values: Vec<String> = (from..from + n)
            .map(|i| format!(r#"["{}","line {i}"]"#, i + 1))
            .collect();
        format!(
            r#"{{"streams":[{{"stream":{{"host":"busy","job":"j"}},"values":[{}]}}]}}"#,
            values.join(",")
        )
    };
    let json = [("Content-Type", "application/json")];
    let first = post(
        &agg.url("/loki/api/v1/push"),
        body(100, 0).as_bytes(),
        &json,
    );
    assert_eq!(first.status, 204, "{}", first.text());
    // A resend of the same lines stores nothing, so it costs nothing of the rate.
    let again = post(
        &agg.url("/loki/api/v1/push"),
        body(100, 0).as_bytes(),
        &json,
    );
    assert_eq!(again.status, 204, "{}", again.text());
    // 100 new lines within the same second are over it: 429 with Retry-After, nothing
    // stored, and the same push is taken once the limit allows.
    let second = post(
        &agg.url("/loki/api/v1/push"),
        body(100, 100).as_bytes(),
        &json,
    );
    assert_eq!(second.status, 429, "{}", second.text());
    assert!(second.header("retry-after").is_some());
    assert_eq!(lines_of(&agg, "busy", JOB_J).len(), 100);
    assert!(wait_until(Duration::from_secs(10), || {
        post(
            &agg.url("/loki/api/v1/push"),
            body(100, 100).as_bytes(),
            &json,
        )
        .status
            == 204
    }));
    assert_eq!(lines_of(&agg, "busy", JOB_J).len(), 200);
    assert_eq!(get(&agg.url("/ready")).status, 200);
}

/// Split roles on a shared Redis store: pushes go to an ingest node (a query node refuses
/// them by name), and a query node serves what was pushed.
#[test]
fn an_ingest_node_takes_pushes_and_a_query_node_serves_them() {
    let backend = Backend::redis();
    let dir = tempfile::tempdir().expect("tempdir");
    let ingest = backend.aggregator(&dir.path().join("in"), "role = \"ingest\"", &[]);
    let query = backend.aggregator(&dir.path().join("q"), "role = \"query\"", &[]);
    let body = br#"{"streams":[{"stream":{"host":"web-9","filename":"/var/log/a.log"},"values":[["1790000000000000000","first"],["1790000000001000000","second"]]}]}"#;
    let json = [("Content-Type", "application/json")];
    let refused = post(&query.url("/loki/api/v1/push"), body, &json);
    assert_eq!(refused.status, 404, "{}", refused.text());
    assert!(refused.text().contains("role"), "{}", refused.text());
    let a = post(&ingest.url("/loki/api/v1/push"), body, &json);
    assert_eq!(a.status, 204, "{}", a.text());
    assert_eq!(
        lines_of(&query, "web-9", "/var/log/a.log"),
        ["first", "second"]
    );
}
