//! Opening a log file: regular files only, and never a wait.
//!
//! `open(2)` of a FIFO waits until a writer opens the other end, and opening a device can do
//! things (a tape rewinds, a terminal becomes ours). The agent opens files on its async
//! workers, and it meets whatever a glob matches, whatever sits beside a file it looks for
//! after a rename or a truncation, and paths swapped between the `stat` that chose them and
//! the `open`. So every open is non-blocking, checked to be a regular file afterwards, and
//! searches of a directory open only the entries whose `stat` already matches.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::checkpoint::FileId;

/// Filesystems whose reads can wait without bound on something other than this machine's
/// disks: a server (NFS, SMB/CIFS, Ceph, AFS, 9P, Lustre, GPFS-like cluster filesystems) or
/// a user-space process (FUSE: sshfs, s3fs, glusterfs, …).
const MAY_HANG: &[i64] = &[
    0x6969,      // NFS
    0x517B,      // SMB
    0xFE53_4D42, // SMB2
    0xFF53_4D42, // CIFS
    0x6573_5546, // FUSE
    0x00C3_6400, // Ceph
    0x5346_414F, // AFS (kAFS)
    0x6B41_4653, // AFS (OpenAFS)
    0x0102_1997, // 9P
    0x0BD0_0BD0, // Lustre
    0x0116_1970, // GFS2
    0x7461_636F, // OCFS2
    0x7375_7245, // Coda
    0x4741_5246, // GPFS
];

/// Whether reads of `file` may hang (a network or user-space filesystem): such a file is
/// read on a thread of its own, so a hung server holds that thread, never an async worker
/// that every other file's pipeline needs.
pub fn reads_may_hang(file: &File) -> bool {
    logship_common::filesystem_type(file).is_ok_and(|t| MAY_HANG.contains(&t))
}

/// Opens `path` for reading if it is a regular file; anything else is an error at once.
pub fn open_regular(path: &Path) -> io::Result<(File, Metadata)> {
    // O_NONBLOCK makes a FIFO's open return at once; reads of a regular file ignore it.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((file, meta))
}

/// Opens `path` if it is the regular file `id` (checked again on the open descriptor).
pub fn open_identity(path: &Path, id: FileId) -> Option<(File, Metadata)> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || FileId::of(&meta) != id {
        return None;
    }
    open_regular(path)
        .ok()
        .filter(|(_, meta)| FileId::of(meta) == id)
}

/// The regular files beside `path` (in its directory, `path` included), with their
/// metadata: where a renamed file or a truncated file's copy is looked for. Nothing is opened.
pub fn regular_siblings(path: &Path) -> impl Iterator<Item = (PathBuf, Metadata)> {
    path.parent()
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let meta = std::fs::metadata(&p).ok()?;
            meta.is_file().then_some((p, meta))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn mkfifo(path: &Path) {
        let made = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("run mkfifo");
        assert!(made.success(), "mkfifo failed");
    }

    #[test]
    fn a_fifo_is_refused_at_once_and_a_regular_file_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("pipe");
        mkfifo(&fifo);
        let start = Instant::now();
        let err = open_regular(&fifo).expect_err("a FIFO is not a log file");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no wait for a writer"
        );

        let log = dir.path().join("a.log");
        std::fs::write(&log, b"x\n").expect("write");
        let (file, meta) = open_regular(&log).expect("a regular file opens");
        assert_eq!(meta.len(), 2);
        let mut buf = [0u8; 2];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 0).expect("read");
        assert_eq!(&buf, b"x\n");
        assert!(open_regular(dir.path()).is_err(), "a directory is refused");
    }

    #[test]
    fn siblings_list_only_regular_files_and_identity_picks_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        mkfifo(&dir.path().join("pipe"));
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let a = dir.path().join("a.log");
        let b = dir.path().join("b.log");
        std::fs::write(&a, b"a\n").expect("write");
        std::fs::write(&b, b"b\n").expect("write");
        let mut names: Vec<_> = regular_siblings(&a)
            .map(|(p, _)| p.file_name().expect("name").to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a.log", "b.log"]);

        let id_b = FileId::of(&std::fs::metadata(&b).expect("stat"));
        assert!(open_identity(&a, id_b).is_none(), "another file's identity");
        assert!(open_identity(&b, id_b).is_some());
        assert!(open_identity(&dir.path().join("pipe"), id_b).is_none());
    }
}
