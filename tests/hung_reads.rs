//! Issue 29.10: a file whose reads hang (a hung NFS server; here a FUSE filesystem whose
//! reads never return) holds only its own reader thread: every other file keeps shipping.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use logship_e2e::*;

/// `tests/fixtures/hanging_fs.py` mounted at `mount`: `files` files whose reads never return.
struct HangingFs {
    child: Child,
    mount: PathBuf,
}

impl HangingFs {
    fn mount(mount: &Path, files: usize) -> HangingFs {
        std::fs::create_dir_all(mount).expect("mkdir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hanging_fs.py");
        let child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(mount)
            .arg(files.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "python3 runs the FUSE helper (apt-get install python3-fusepy; scripts/test does)",
            );
        let fs = HangingFs {
            child,
            mount: mount.to_path_buf(),
        };
        assert!(
            wait_until(Duration::from_secs(10), || std::fs::read_dir(mount)
                .is_ok_and(|d| d.count() == files)),
            "the FUSE filesystem did not mount (is python3-fusepy installed and /dev/fuse there?)"
        );
        fs
    }
}

impl Drop for HangingFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

#[test]
fn files_whose_reads_hang_do_not_hold_back_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agg = Aggregator::start(&dir.path().join("data"), &[]);
    // Declared before the filesystem, so dropped after it, even on a failure: an agent
    // thread in a hung FUSE read dies only once the filesystem's process is gone.
    let agent: Agent;
    // More hung files than this machine has async workers (one per core).
    let hung = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
    let fs = HangingFs::mount(&dir.path().join("nfs"), hung);
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let local = logs.join("local.log");
    append_lines(&local, "local", 0..200);
    let metrics = free_addr();
    let cfg = agent_config(
        dir.path(),
        &agg.url("/store/batch"),
        "h",
        &[
            &format!("{}/*.log", fs.mount.display()),
            &format!("{}/*.log", logs.display()),
        ],
        &format!("metrics_listen = {metrics:?}\n"),
        "",
    );
    agent = Agent::start(&cfg);
    assert_all_shipped(
        &agg,
        "h",
        std::slice::from_ref(&local),
        Duration::from_secs(15),
    );
    assert!(
        wait_until(Duration::from_secs(15), || agent_metric(
            &metrics,
            "agent_files_on_reader_threads"
        ) == hung as f64),
        "hung files on reader threads: {}",
        agent_metric(&metrics, "agent_files_on_reader_threads")
    );
    // And it keeps shipping, with every hung read still pending.
    append_lines(&local, "later", 200..300);
    assert_all_shipped(
        &agg,
        "h",
        std::slice::from_ref(&local),
        Duration::from_secs(15),
    );
    assert!(agent_metric(&metrics, "agent_files_tracked") >= (hung + 1) as f64);
    drop(fs);
    drop(agent);
}
