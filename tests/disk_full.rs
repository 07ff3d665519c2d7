//! Issue 5 (part): the store's filesystem fills up. Ingest answers 503 with Retry-After,
//! nothing acknowledged is lost, and ingest resumes when space returns. The data directory
//! is a small tmpfs mounted by the test (CI runs as root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use logship_e2e::*;

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mkdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mounting a tmpfs needs root");
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(ok.success(), "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn batch(start: u64) -> Vec<Vec<u8>> {
    (start..start + 1000)
        .map(|i| format!("disk line {i:08} {}", "d".repeat(100)).into_bytes())
        .collect()
}

#[test]
fn disk_full_answers_503_keeps_acknowledged_lines_and_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = Tmpfs::mount(&dir.path().join("mnt"), "6m");
    let agg = Aggregator::start(&dir.path().join("mnt/data"), &[]);
    let mut acked = 0u64;
    let mut refused = None;
    for _ in 0..200 {
        let lines = batch(acked);
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let a = post_compact(&agg, "h", "/full", "g", acked, &refs);
        if a.status == 200 {
            acked += 1000;
        } else {
            refused = Some(a);
            break;
        }
    }
    let a = refused.expect("the disk never filled up");
    assert_eq!(a.status, 503, "{}", a.text());
    assert!(a.header("retry-after").is_some());
    assert!(a.json()["error"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(get(&agg.url("/ruok")).text(), "imok");
    let expected: Vec<u8> = (0..acked / 1000)
        .flat_map(|b| batch(b * 1000))
        .flat_map(|mut l| {
            l.push(b'\n');
            l
        })
        .collect();
    let got = agg
        .log("h", "/full", &format!("&to={}", acked - 1))
        .expect("download");
    assert!(
        got == expected,
        "acknowledged lines changed after the disk filled ({} vs {} bytes)",
        got.len(),
        expected.len()
    );
    // Space returns: the refused batch goes in, and everything is there.
    fs.resize("64m");
    let lines = batch(acked);
    let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    assert!(
        wait_until(Duration::from_secs(20), || post_compact(
            &agg, "h", "/full", "g", acked, &refs
        )
        .status
            == 200),
        "ingest did not resume after space returned"
    );
    let all = agg.log("h", "/full", "").expect("download");
    assert_eq!(
        all.len(),
        expected.len() + lines.iter().map(|l| l.len() + 1).sum::<usize>()
    );
    assert!(all.starts_with(&expected));
}
