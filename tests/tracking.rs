//! Issue 29.11: `limits.max_tracked_files` caps the files tailed at once (newly found ones
//! wait, reported once, nothing tracked is lost), and a checkpoint whose file is gone for
//! `forget_after` is removed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use logship_e2e::*;

fn shipped(agg: &Aggregator, files: &[PathBuf]) -> Vec<PathBuf> {
    files
        .iter()
        .filter(|f| shipped_exactly(agg, "h", f))
        .cloned()
        .collect()
}

#[test]
fn past_max_tracked_files_new_files_wait_and_nothing_tracked_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let files: Vec<PathBuf> = (0..5).map(|i| logs.join(format!("f{i}.log"))).collect();
    for (i, f) in files.iter().enumerate() {
        append_lines(f, &format!("f{i}"), 0..100);
    }
    let metrics = free_addr();
    let cfg = agent_config(
        dir.path(),
        &agg.url("/store/batch"),
        "h",
        &[&format!("{}/*.log", logs.display())],
        &format!("metrics_listen = {metrics:?}\n[limits]\nmax_tracked_files = 3\n"),
        "",
    );
    let check = std::process::Command::new(bin("agent"))
        .args(["--check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("agent --check-config");
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        out.contains("limits.max_tracked_files = 3: the other 2 wait"),
        "{out}"
    );
    let log = dir.path().join("agent.log");
    let _agent = Agent::start_logged(&cfg, &[], &log);
    assert!(
        wait_until(Duration::from_secs(15), || shipped(&agg, &files).len() == 3
            && agent_metric(&metrics, "agent_files_waiting") == 2.0),
        "shipped {:?}, waiting {}",
        shipped(&agg, &files),
        agent_metric(&metrics, "agent_files_waiting")
    );
    // Several polls later, still three: the others wait and the limit was said once.
    assert!(wait_until(Duration::from_secs(10), || agent_metric(
        &metrics,
        "agent_files_tracked"
    ) == 3.0));
    let tracked = shipped(&agg, &files);
    assert_eq!(tracked.len(), 3);
    // The tracked files keep shipping; two of them then go, which frees two slots.
    for f in &tracked {
        append_lines(f, "more", 100..150);
    }
    assert!(wait_until(Duration::from_secs(15), || tracked
        .iter()
        .all(|f| shipped_exactly(&agg, "h", f))));
    for f in &tracked[..2] {
        let kept = std::fs::read(f).expect("read");
        std::fs::remove_file(f).expect("delete");
        // What was shipped stays as it was.
        assert_eq!(
            agg.log("h", &f.to_string_lossy(), ""),
            Ok(kept),
            "{}",
            f.display()
        );
    }
    let waiting: Vec<PathBuf> = files
        .iter()
        .filter(|f| !tracked.contains(f))
        .cloned()
        .collect();
    assert_all_shipped(&agg, "h", &waiting, Duration::from_secs(20));
    assert_all_shipped(&agg, "h", &tracked[2..], Duration::from_secs(5));
    assert!(wait_until(Duration::from_secs(5), || agent_metric(
        &metrics,
        "agent_files_waiting"
    ) == 0.0));
    let text = std::fs::read_to_string(&log).expect("agent log");
    assert_eq!(
        text.matches("limits.max_tracked_files files are tailed")
            .count(),
        1,
        "{text}"
    );
}

fn checkpointed(state: &Path, file: &Path) -> bool {
    std::fs::read_to_string(state.join("checkpoints.json"))
        .is_ok_and(|t| t.contains(&*file.to_string_lossy()))
}

#[test]
fn a_checkpoint_whose_file_is_gone_for_forget_after_is_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let old = logs.join("old.log");
    append_lines(&old, "old", 0..50);
    let metrics = free_addr();
    let config = |pattern: &str| {
        agent_config(
            dir.path(),
            &agg.url("/store/batch"),
            "h",
            &[&format!("{}/{pattern}", logs.display())],
            &format!("metrics_listen = {metrics:?}\nforget_after = \"2s\"\n"),
            "",
        )
    };
    let cfg = config("*.log");
    let agent = Agent::start(&cfg);
    assert_all_shipped(
        &agg,
        "h",
        std::slice::from_ref(&old),
        Duration::from_secs(15),
    );
    let state = dir.path().join("state");
    assert!(wait_until(Duration::from_secs(5), || checkpointed(
        &state, &old
    )));
    // A reload that no longer matches the file keeps its checkpoint (it may come back)...
    assert_eq!(config("*.txt"), cfg);
    agent.proc.signal("HUP");
    assert!(wait_until(Duration::from_secs(5), || agent_metric(
        &metrics,
        "agent_files_tracked"
    ) == 0.0));
    assert!(checkpointed(&state, &old));
    // ...until the file is gone for forget_after.
    std::fs::remove_file(&old).expect("delete");
    assert!(
        wait_until(Duration::from_secs(15), || !checkpointed(&state, &old)),
        "the gone file's checkpoint is still kept"
    );
    assert_eq!(
        agent_metric(&metrics, "agent_checkpoints_forgotten_total"),
        1.0
    );
}
