//! Generation ids: one lifetime of a file, named from the file itself so that re-reading
//! the same content (an agent restarted without its state) yields the same id and a resend
//! overwrites identical cells instead of duplicating them.
//!
//! Format: `{dev:x}-{ino:x}-{life}-{len:x}-{xxh3 of the first len bytes:016x}`, where `len`
//! covers the first line with its `\n` (at most 1 KiB). A file whose first line stays
//! incomplete past `partial_line_timeout` is named from what it holds then; the length in the
//! id lets the same prefix be checked again later.
//!
//! The first line alone cannot tell lives apart that begin with the same line (a CSV header,
//! a banner): a truncated file, or one deleted and created again on the same inode, got its
//! old life's id, and its lines were stored over the old ones. `life` tells them apart: `b`
//! and the file's birth time in nanoseconds (a new inode, even a reused one, is born anew;
//! left out where the filesystem has no birth time), then `t` and a count when a truncation
//! would otherwise repeat the id of the life before it. Ids from before (`dev-ino-len-hash`)
//! are still read: a file named so keeps its name.

use std::fs::{File, Metadata};
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
    let life = birth(&file.metadata()?).map_or(String::new(), |b| format!("b{b:x}-"));
    Ok(Some(format!(
        "{:x}-{:x}-{life}{len:x}-{hash:016x}",
        id.dev, id.ino
    )))
}

/// The file's birth time in nanoseconds, where the filesystem keeps one.
fn birth(meta: &Metadata) -> Option<u128> {
    let t = meta.created().ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos())
}

/// An id taken apart.
#[derive(Debug, PartialEq, Eq)]
struct Parts<'a> {
    dev: &'a str,
    ino: &'a str,
    /// Birth time as written (hex nanoseconds), if the id has one.
    birth: Option<&'a str>,
    /// Truncations that would have repeated the id of the life before.
    count: u64,
    len: &'a str,
    hash: &'a str,
}

impl<'a> Parts<'a> {
    fn parse(generation: &'a str) -> Option<Self> {
        // Asked on every read turn: no allocation.
        let mut p = generation.split('-');
        let (dev, ino, life, len, hash) =
            match [p.next(), p.next(), p.next(), p.next(), p.next(), p.next()] {
                [Some(dev), Some(ino), Some(len), Some(hash), None, _] => (dev, ino, "", len, hash),
                [Some(dev), Some(ino), Some(life), Some(len), Some(hash), None] => {
                    (dev, ino, life, len, hash)
                }
                _ => return None,
            };
        let (birth, count) = match life.split_once('t') {
            Some((b, t)) => (b, t.parse().ok()?),
            None => (life, 0),
        };
        let birth = match birth {
            "" => None,
            b => Some(b.strip_prefix('b')?),
        };
        Some(Parts {
            dev,
            ino,
            birth,
            count,
            len,
            hash,
        })
    }

    fn render(&self) -> String {
        let mut life = self.birth.map_or(String::new(), |b| format!("b{b}"));
        if self.count > 0 {
            life.push_str(&format!("t{}", self.count));
        }
        if life.is_empty() {
            format!("{}-{}-{}-{}", self.dev, self.ino, self.len, self.hash)
        } else {
            format!(
                "{}-{}-{life}-{}-{}",
                self.dev, self.ino, self.len, self.hash
            )
        }
    }
}

/// The id for a file's new life after a truncation: `derived` as it is, unless it repeats
/// the id of the life before (same inode, birth and first line), then with the next count.
pub fn after_truncation(derived: String, previous: &str) -> String {
    let (Some(new), Some(old)) = (Parts::parse(&derived), Parts::parse(previous)) else {
        return derived;
    };
    let same = |a: &Parts, b: &Parts| Parts { count: 0, ..*a } == Parts { count: 0, ..*b };
    if !same(&new, &old) {
        return derived;
    }
    Parts {
        count: old.count + 1,
        ..new
    }
    .render()
}

/// Whether the id records a birth time and it is the file's: the same file, surely (so a
/// different first line means it was truncated, not replaced by another on its inode).
pub fn born_as_named(meta: &Metadata, generation: &str) -> bool {
    Parts::parse(generation)
        .and_then(|p| p.birth)
        .zip(birth(meta))
        .is_some_and(|(named, now)| u128::from_str_radix(named, 16).ok() == Some(now))
}

/// Whether the file is the one born when `generation` was named (true where the id or the
/// filesystem has no birth time): a file deleted and created again on the same inode is not.
pub fn same_birth(meta: &Metadata, generation: &str) -> bool {
    match (Parts::parse(generation).and_then(|p| p.birth), birth(meta)) {
        (Some(named), Some(now)) => u128::from_str_radix(named, 16).ok() == Some(now),
        _ => true,
    }
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
    generation.starts_with(&format!("{:x}-{:x}-", id.dev, id.ino))
        && same_content(file, generation)
        && file.metadata().is_ok_and(|m| same_birth(&m, generation))
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

    #[test]
    fn a_new_life_that_repeats_the_id_before_it_is_counted() {
        let born = "fe00-9a-b18ec-13-00000000000000aa";
        assert_eq!(
            after_truncation(born.to_owned(), born),
            "fe00-9a-b18ect1-13-00000000000000aa"
        );
        assert_eq!(
            after_truncation(born.to_owned(), "fe00-9a-b18ect1-13-00000000000000aa"),
            "fe00-9a-b18ect2-13-00000000000000aa"
        );
        let other_line = "fe00-9a-b18ec-13-00000000000000bb";
        assert_eq!(after_truncation(other_line.to_owned(), born), other_line);
        let reborn = "fe00-9a-b18ed-13-00000000000000aa";
        assert_eq!(after_truncation(reborn.to_owned(), born), reborn);
        // Ids of before the birth time, and filesystems without one.
        let old = "fe00-9a-13-00000000000000aa";
        assert_eq!(
            after_truncation(old.to_owned(), old),
            "fe00-9a-t1-13-00000000000000aa"
        );
        assert_eq!(
            after_truncation(old.to_owned(), "fe00-9a-t1-13-00000000000000aa"),
            "fe00-9a-t2-13-00000000000000aa"
        );
        assert_eq!(after_truncation("garbage".to_owned(), old), "garbage");
    }

    #[test]
    fn ids_carry_the_birth_and_a_file_born_again_is_another_life() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"header\n").expect("write");
        let f = File::open(&p).expect("open");
        let meta = f.metadata().expect("stat");
        let g = derive(&f, FileId::of(&meta), false)
            .expect("derive")
            .expect("id");
        assert!(same_birth(&meta, &g));
        assert!(belongs(&f, FileId::of(&meta), &g));
        assert!(
            same_birth(&meta, "fe00-9a-13-00000000000000aa"),
            "no birth in the id"
        );
        if meta.created().is_err() {
            return; // this filesystem keeps no birth time: ids are as before
        }
        assert!(
            g.split('-').nth(2).is_some_and(|l| l.starts_with('b')),
            "{g}"
        );
        // Deleted and created again with the same first line. The kernel's file times
        // are coarse (a clock tick of a few ms), so create until the birth time moves on.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let again = loop {
            std::fs::remove_file(&p).expect("delete");
            std::fs::write(&p, b"header\n").expect("create");
            let m = std::fs::metadata(&p).expect("stat");
            if m.created().ok() != meta.created().ok() {
                break m;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "birth time never moved"
            );
        };
        assert!(!same_birth(&again, &g), "born again: another life");
        assert!(born_as_named(&meta, &g) && !born_as_named(&again, &g));
        assert!(
            !born_as_named(&meta, "fe00-9a-13-00000000000000aa"),
            "unknown is not sure"
        );
        let f2 = File::open(&p).expect("open");
        assert!(!belongs(&f2, FileId::of(&again), &g));
    }
}
