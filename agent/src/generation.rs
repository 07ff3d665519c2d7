//! Generation ids: one lifetime of a file, named from the file itself so that re-reading
//! the same content (an agent restarted without its state) yields the same id and a resend
//! overwrites identical cells instead of duplicating them.
//!
//! Format: `{dev:x}-{ino:x}-{len:x}-{xxh3 of the first len bytes:016x}`, where `len` covers
//! the first line with its `\n` (at most 1 KiB). A file whose first line stays incomplete
//! past `partial_line_timeout` is named from what it holds then; the length in the id lets
//! the same prefix be checked again later.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::checkpoint::FileId;

/// Bytes of the start of a file that can identify its generation.
const FINGERPRINT_BYTES: usize = 1024;

fn head(file: &File) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; FINGERPRINT_BYTES];
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// The generation id of `file`, or `None` while its first line is incomplete (unless
/// `allow_partial`, then from the bytes it holds, if any).
pub fn derive(file: &File, id: FileId, allow_partial: bool) -> std::io::Result<Option<String>> {
    let head = head(file)?;
    let len = match memchr::memchr(b'\n', &head) {
        Some(i) => i + 1,
        None if head.len() == FINGERPRINT_BYTES => head.len(),
        None if allow_partial && !head.is_empty() => head.len(),
        None => return Ok(None),
    };
    let hash = xxhash_rust::xxh3::xxh3_64(&head[..len]);
    Ok(Some(format!(
        "{:x}-{:x}-{len:x}-{hash:016x}",
        id.dev, id.ino
    )))
}

/// Whether `file` starts with the content generation `generation` was named from,
/// whatever its identity (a copy made by copytruncate does).
pub fn same_content(file: &File, generation: &str) -> bool {
    starts_as(file, generation).unwrap_or(false)
}

/// As [`same_content`], with a read error as an error rather than "no": a tailer asks this
/// of the file it is reading, and must not start a new generation because a read failed.
pub fn starts_as(file: &File, generation: &str) -> std::io::Result<bool> {
    let mut parts = generation.rsplitn(3, '-');
    let (Some(hash), Some(len)) = (parts.next(), parts.next()) else {
        return Ok(false);
    };
    let (Ok(hash), Ok(len)) = (
        u64::from_str_radix(hash, 16),
        usize::from_str_radix(len, 16),
    ) else {
        return Ok(false);
    };
    if len == 0 || len > FINGERPRINT_BYTES {
        return Ok(false);
    }
    let mut buf = [0u8; FINGERPRINT_BYTES];
    let mut n = 0;
    while n < len {
        match file.read_at(&mut buf[n..len], n as u64)? {
            0 => return Ok(false),
            k => n += k,
        }
    }
    Ok(xxhash_rust::xxh3::xxh3_64(&buf[..len]) == hash)
}

/// Whether `file` (identity `id`) is still in generation `generation`: same identity and
/// same first bytes. False after inode reuse or a truncation.
pub fn belongs(file: &File, id: FileId, generation: &str) -> bool {
    generation.starts_with(&format!("{:x}-{:x}-", id.dev, id.ino)) && same_content(file, generation)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn ids_are_stable_and_checkable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        let mut f = File::create(&p).expect("create");
        let id = FileId { dev: 1, ino: 2 };
        let r = File::open(&p).expect("open");
        assert_eq!(
            derive(&r, id, false).expect("derive"),
            None,
            "empty file has no generation yet"
        );
        f.write_all(b"partial").expect("write");
        assert_eq!(derive(&r, id, false).expect("derive"), None);
        let early = derive(&r, id, true).expect("derive").expect("partial id");
        f.write_all(b" line\nsecond\n").expect("write");
        let full = derive(&r, id, false).expect("derive").expect("full id");
        assert_ne!(early, full);
        assert!(belongs(&r, id, &early), "the partial prefix still matches");
        assert!(belongs(&r, id, &full));
        assert!(
            !belongs(&r, FileId { dev: 1, ino: 3 }, &full),
            "another inode"
        );
        assert_eq!(
            derive(&r, id, false).expect("again"),
            Some(full.clone()),
            "stable"
        );
        f.set_len(0).expect("truncate");
        f.write_all(b"new first line\n").expect("write");
        assert!(!belongs(&r, id, &full), "truncated and rewritten");
    }

    #[test]
    fn starts_as_sees_a_rewrite_that_is_longer_than_the_old_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"first line\nsecond\n").expect("write");
        let r = File::open(&p).expect("open");
        let g = derive(&r, FileId { dev: 1, ino: 2 }, false)
            .expect("derive")
            .expect("id");
        assert!(starts_as(&r, &g).expect("read"));
        std::fs::write(&p, b"other line\n".repeat(100)).expect("rewrite");
        assert!(
            !starts_as(&r, &g).expect("read"),
            "same size or larger, other content"
        );
        std::fs::write(&p, b"first").expect("shorter than the first line");
        assert!(!starts_as(&r, &g).expect("read"));
        assert!(!starts_as(&r, "not-an-id").expect("read"));
    }
}
