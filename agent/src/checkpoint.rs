//! Checkpoints: per file identity, the position up to which the aggregator has acknowledged
//! the file's lines. They move only after an ack and are written atomically (temp file,
//! fsync, rename, fsync of the directory), so after any crash the agent resumes at or
//! before the last acknowledged line — never after it — and resends are idempotent.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Identity of an open file: survives renames, distinguishes a re-created path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Where a file's shipping stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The stored file name (the configured or discovered path, even after a rename).
    pub file: String,
    pub id: FileId,
    /// Generation the position belongs to; a different generation at the same identity
    /// (inode reuse, truncation) invalidates the position.
    pub generation: String,
    /// Byte offset just after the last acknowledged complete line.
    pub offset: u64,
    /// Number of the next line to ship.
    pub line: u64,
}

/// The on-disk format, version-tagged so it can evolve.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "version")]
enum StateFile {
    #[serde(rename = "1")]
    V1 { checkpoints: Vec<Checkpoint> },
}

/// All checkpoints of this agent, shared by every pipeline.
#[derive(Debug)]
pub struct Checkpoints {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    map: HashMap<FileId, Checkpoint>,
    dirty: bool,
    saved_at: Instant,
}

const FILE_NAME: &str = "checkpoints.json";

/// Creates `state_dir` if needed and checks that a file can be written in it. Checked at
/// start (and by `--check-config`), not at the first save: an agent that cannot save its
/// checkpoints would ship for days and resend everything at each restart.
pub fn prepare_state_dir(state_dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    probe_writable(state_dir)
}

/// Whether the agent could prepare `state_dir`, without creating it: `--check-config` may
/// run as another user (root) than the agent, and a directory it created would be that
/// user's. Checks the directory if it exists, else the nearest existing parent.
pub fn state_dir_usable(state_dir: &Path) -> std::io::Result<()> {
    let mut dir = state_dir;
    while !dir.exists() {
        dir = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if dir == Path::new(".") {
            break;
        }
    }
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        ));
    }
    probe_writable(dir)
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| std::io::Error::new(e.kind(), format!("not writable: {e}")))
}

impl Checkpoints {
    /// Loads `state_dir/checkpoints.json` (creating the directory). An unreadable file is
    /// set aside, not fatal: starting over only resends, which the store makes harmless.
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        prepare_state_dir(state_dir)?;
        let path = state_dir.join(FILE_NAME);
        let map = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
                Ok(StateFile::V1 { checkpoints }) => {
                    checkpoints.into_iter().map(|c| (c.id, c)).collect()
                }
                Err(e) => {
                    let aside = state_dir.join(format!("{FILE_NAME}.corrupt"));
                    tracing::error!(error = %e, aside = %aside.display(), "unreadable checkpoints; files will be resent");
                    std::fs::rename(&path, aside)?;
                    HashMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        Ok(Checkpoints {
            path,
            inner: Mutex::new(Inner {
                map,
                dirty: false,
                saved_at: Instant::now(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, id: FileId) -> Option<Checkpoint> {
        self.lock().map.get(&id).cloned()
    }

    pub fn all(&self) -> Vec<Checkpoint> {
        self.lock().map.values().cloned().collect()
    }

    /// Records an acknowledged position.
    pub fn ack(&self, cp: Checkpoint) {
        let mut g = self.lock();
        g.map.insert(cp.id, cp);
        g.dirty = true;
    }

    /// Forgets a file that is finished (rotated away and drained) or gone.
    pub fn remove(&self, id: FileId) {
        let mut g = self.lock();
        if g.map.remove(&id).is_some() {
            g.dirty = true;
        }
    }

    /// Seconds since the last successful save.
    pub fn age_secs(&self) -> f64 {
        self.lock().saved_at.elapsed().as_secs_f64()
    }

    /// Writes the checkpoints if anything changed since the last save.
    pub fn save(&self) -> std::io::Result<()> {
        let snapshot = {
            let mut g = self.lock();
            if !g.dirty {
                g.saved_at = Instant::now();
                return Ok(());
            }
            g.dirty = false;
            let mut v: Vec<Checkpoint> = g.map.values().cloned().collect();
            v.sort_by(|a, b| a.file.cmp(&b.file).then(a.id.ino.cmp(&b.id.ino)));
            v
        };
        let result = write_atomically(
            &self.path,
            &StateFile::V1 {
                checkpoints: snapshot,
            },
        );
        let mut g = self.lock();
        match result {
            Ok(()) => g.saved_at = Instant::now(),
            Err(_) => g.dirty = true,
        }
        result
    }
}

/// Writes `state` as JSON to `path` so that a crash leaves the old file or the new one,
/// never a mix: a temporary file fsynced, renamed over, and the directory fsynced.
pub(crate) fn write_atomically<T: serde::Serialize>(path: &Path, state: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    serde_json::to_writer(&mut f, state)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_reloads_and_survives_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cps = Checkpoints::open(dir.path()).expect("open");
        let id = FileId { dev: 1, ino: 2 };
        cps.ack(Checkpoint {
            file: "/a".into(),
            id,
            generation: "g".into(),
            offset: 10,
            line: 3,
        });
        cps.save().expect("save");
        let again = Checkpoints::open(dir.path()).expect("reopen");
        assert_eq!(again.get(id).map(|c| (c.offset, c.line)), Some((10, 3)));
        std::fs::write(dir.path().join(FILE_NAME), b"{garbage").expect("write");
        let fresh = Checkpoints::open(dir.path()).expect("garbage is set aside");
        assert!(fresh.all().is_empty());
        assert!(dir.path().join("checkpoints.json.corrupt").exists());
    }
}
