//! Issue 30.13 (in part): the vendored sled is the published 0.34.7 plus `vendored.patch`,
//! nothing else: the published source is fetched through cargo, patched, and compared with
//! the copy file by file.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The published sled 0.34.7's source directory, fetched into cargo's registry if needed.
fn published_sled(scratch: &Path) -> PathBuf {
    std::fs::create_dir_all(scratch.join("src")).expect("mkdir");
    std::fs::write(
        scratch.join("Cargo.toml"),
        "[package]\nname = \"fetch-sled\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[dependencies]\nsled = \"=0.34.7\"\n\n[workspace]\n",
    )
    .expect("manifest");
    std::fs::write(scratch.join("src/lib.rs"), "").expect("lib");
    let manifest_path = scratch.join("Cargo.toml");
    let m = logship_e2e::cargo_metadata(&["--manifest-path".as_ref(), manifest_path.as_os_str()]);
    let manifest = m["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "sled" && p["version"] == "0.34.7")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("sled 0.34.7 in the metadata");
    PathBuf::from(manifest)
        .parent()
        .expect("its directory")
        .to_path_buf()
}

fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p.strip_prefix(root).expect("inside").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_vendored_sled_is_the_release_plus_its_patch() {
    let vendored = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vendor/sled");
    let scratch = tempfile::tempdir().expect("tempdir");
    let published = published_sled(&scratch.path().join("fetch"));
    let patched = scratch.path().join("patched");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(&published)
        .arg(&patched)
        .status()
        .expect("cp");
    assert!(copied.success());
    let applied = Command::new("git")
        .arg("apply")
        .arg(vendored.join("vendored.patch"))
        .current_dir(&patched)
        .output()
        .expect("git apply");
    assert!(
        applied.status.success(),
        "vendored.patch does not apply to the release: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let mut differ = Vec::new();
    let ours = files(&vendored);
    assert!(ours.len() > 40, "{} files vendored", ours.len());
    for f in &ours {
        if ["VENDORED.md", "vendored.patch"].contains(&f.to_str().unwrap_or_default()) {
            continue;
        }
        if std::fs::read(vendored.join(f)).ok() != std::fs::read(patched.join(f)).ok() {
            differ.push(f.display().to_string());
        }
    }
    assert!(
        differ.is_empty(),
        "vendor/sled differs from sled 0.34.7 + vendored.patch in {differ:?}: put every change in the patch (and say why in VENDORED.md)"
    );
}
