//! Issue 16: SIGHUP reloads both binaries without a restart, without losing or repeating a
//! line: sources added and removed, a batch size changed, the token changed on both sides,
//! a bad file refused — while ten files are written at a steady rate.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use logship_e2e::*;

fn agent_toml(
    dir: &Path,
    url: &str,
    token: &str,
    globs: &[&str],
    batch_lines: u32,
    metrics: &str,
) -> String {
    let sources: String = globs
        .iter()
        .map(|g| {
            format!(
                "[[sources]]\npaths = [{:?}]\nbatch_lines = {batch_lines}\n\n",
                dir.join(g).display().to_string()
            )
        })
        .collect();
    format!(
        "host = \"h\"\nstate_dir = {:?}\npoll_interval = \"300ms\"\nmetrics_listen = {metrics:?}\n\n[sink]\nurl = {url:?}\ntoken = {token:?}\n\n[defaults]\nlinger = \"50ms\"\nretry = {{ initial = \"20ms\", max = \"300ms\" }}\n\n{sources}",
        dir.join("state").display().to_string()
    )
}

logship_e2e::both_backends!(sighup_reloads_both_sides_while_files_are_written);

fn sighup_reloads_both_sides_while_files_are_written(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for sub in ["a", "b"] {
        std::fs::create_dir_all(d.join(sub)).expect("mkdir");
    }
    let a_files: Vec<PathBuf> = (0..10).map(|i| d.join(format!("a/f{i}.log"))).collect();
    let b_files: Vec<PathBuf> = (0..3).map(|i| d.join(format!("b/g{i}.log"))).collect();
    for f in &b_files {
        append_lines(f, "b before", 0..200);
    }
    let agg_cfg = |tokens: &str| {
        format!(
            "[auth]\nwrite_tokens = [{tokens}]\n{}",
            backend.store_toml()
        )
    };
    let agg = Aggregator::with_config(d, &agg_cfg("\"t1\""));
    let url = agg.url("/store/batch");
    let metrics = free_addr();
    let cfg = d.join("agent.toml");
    let write_cfg = |token: &str, globs: &[&str], batch: u32| {
        std::fs::write(&cfg, agent_toml(d, &url, token, globs, batch, &metrics)).expect("write");
    };
    write_cfg("t1", &["a/*.log"], 1000);
    let agent = Agent::start(&cfg);

    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Ten files written at a steady rate all along.
        let (files, stop_ref) = (&a_files, &stop);
        let writer = s.spawn(move || {
            let mut n = 0;
            while !stop_ref.load(Ordering::SeqCst) {
                for f in files {
                    append_lines(f, "a", n..n + 5);
                }
                n += 5;
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let tracked = || agent_metric(&metrics, "agent_files_tracked ");
        assert!(
            wait_until(Duration::from_secs(20), || tracked() == 10.0),
            "{}",
            tracked()
        );

        // 1. Add a glob.
        write_cfg("t1", &["a/*.log", "b/*.log"], 1000);
        agent.proc.signal("HUP");
        assert!(
            wait_until(Duration::from_secs(20), || b_files
                .iter()
                .all(|f| shipped_exactly(&agg, "h", f))),
            "files of an added glob not shipped"
        );
        assert_eq!(tracked(), 13.0);

        // 2. Remove it: its pipelines drain; lines written meanwhile wait for its return.
        write_cfg("t1", &["a/*.log"], 1000);
        agent.proc.signal("HUP");
        assert!(
            wait_until(Duration::from_secs(20), || tracked() == 10.0),
            "{}",
            tracked()
        );
        for f in &b_files {
            append_lines(f, "b while removed", 200..300);
        }

        // 3. Change the batch size: the files' pipelines restart from their checkpoints.
        write_cfg("t1", &["a/*.log"], 7);
        agent.proc.signal("HUP");

        // A bad file is refused and changes nothing.
        std::fs::write(&cfg, "this is [not toml").expect("write");
        agent.proc.signal("HUP");
        std::fs::write(d.join("agg.toml"), "[auth\nwrite_tokens =").expect("write");
        agg.proc.signal("HUP");
        assert!(wait_until(Duration::from_secs(10), || {
            metric(
                &get(&agg.url("/metrics")).text(),
                "aggregator_config_reload_failures_total ",
            ) >= 1.0
        }));

        // 4. A new token on both sides: the aggregator first (the agent parks), then the agent.
        std::fs::write(d.join("agg.toml"), agg_cfg("\"t2\"")).expect("write");
        agg.proc.signal("HUP");
        assert!(
            wait_until(Duration::from_secs(20), || agent_metric(
                &metrics,
                "agent_parked_files "
            ) >= 1.0),
            "the old token was not refused"
        );
        write_cfg("t2", &["a/*.log"], 7);
        agent.proc.signal("HUP");
        assert!(
            wait_until(Duration::from_secs(20), || agent_metric(
                &metrics,
                "agent_parked_files "
            ) == 0.0),
            "files still parked with the new token"
        );

        // 5. The glob comes back: its files resume from their checkpoints.
        write_cfg("t2", &["a/*.log", "b/*.log"], 7);
        agent.proc.signal("HUP");
        stop.store(true, Ordering::SeqCst);
        writer.join().expect("writer");
    });
    let all: Vec<&PathBuf> = a_files.iter().chain(&b_files).collect();
    assert!(
        wait_until(Duration::from_secs(60), || all
            .iter()
            .all(|f| shipped_exactly(&agg, "h", f))),
        "not every file arrived whole: {:?}",
        all.iter()
            .filter(|f| !shipped_exactly(&agg, "h", f))
            .collect::<Vec<_>>()
    );
    // Nothing twice: one generation per file holding exactly its lines.
    for f in &all {
        let gens = generations(&agg, "h", &f.to_string_lossy());
        assert_eq!(gens.len(), 1, "{}: {gens:?}", f.display());
        assert_eq!(gens[0].1, line_count(f), "{}", f.display());
    }
    assert!(agent_metric(&metrics, "agent_dead_letter_batches_total ") == 0.0);
    let m = get(&agg.url("/metrics")).text();
    assert!(metric(&m, "aggregator_config_reloads_total ") >= 1.0, "{m}");
}
