//! Issue 6: a short run of the benchmark, so the command cannot rot. Checks it completes
//! (every scenario verifies its own result) and writes its figures as JSON.

use std::process::Command;

use logship_e2e::bin;

#[test]
fn quick_benchmark_runs_every_scenario_and_writes_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("bench.json");
    let out = Command::new(bin("logship-bench"))
        .arg("--quick")
        .arg("--tls")
        .args(["--sinks", "2", "--sink-down-secs", "1"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run logship-bench");
    assert!(
        out.status.success(),
        "benchmark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("valid JSON");
    let rows = v["rows"].as_array().expect("rows");
    for scenario in [
        "ingest",
        "ingest-tls",
        "store",
        "agent",
        "system",
        "system-tls",
        "download",
        "idle",
        "latency",
        "search",
        "push",
    ] {
        let n = rows.iter().filter(|r| r["scenario"] == scenario).count();
        assert!(n > 0, "no figures for scenario {scenario}");
    }
    for metric in [
        "2 sinks ÷ 1 sink",
        "one of 2 sinks down",
        "the down sink back",
    ] {
        assert!(
            rows.iter()
                .any(|r| r["metric"].as_str().is_some_and(|m| m.starts_with(metric))),
            "no figure {metric:?}"
        );
    }
    assert!(rows
        .iter()
        .all(|r| r["value"].as_f64().is_some_and(f64::is_finite)));
}
