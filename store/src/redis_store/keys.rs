//! The redis backend's key layout and value codecs, in one place.
//!
//! ```text
//! <p>:next_id                     STRING  INCR source of generation ids (unique across processes)
//! <p>:hosts                       ZSET    every host, score 0, read with ZRANGEBYLEX (paging)
//! <p>:by_last                     ZSET    generation id → last write (ms); retention's candidates
//! <p>:written                     channel PUBLISH on every write: followers on query nodes wake
//! <p>:{h:<host>}:files            ZSET    the host's files, score 0, ZRANGEBYLEX
//! <p>:{h:<host>}:gens:<file>      HASH    generation name → id
//! <p>:{g<id>}:m                   HASH    state, host, file, name, lines, max_line, bytes,
//!                                         first, last (ms)
//! <p>:{g<id>}:<bucket>            STRING  up to 128 consecutive lines: a 17-byte header
//!                                         (entry count u8, first and last receive time as
//!                                         f64 ms, big-endian) then the entries in the sled
//!                                         backend's bucket encoding
//! ```
//!
//! Every key of one generation shares the hash tag `{g<id>}`, so a batch is one script on
//! one slot owner; a host's file index and its generation maps share `{h:<host>}`, so
//! creating a generation and listing it are atomic together. Hash tags end at the first `}`:
//! a host containing one still maps all its keys to one slot, because they share the prefix
//! up to it. Nothing on the write or download path scans keys: a generation's buckets are
//! named by number, up to its `max_line`.

use crate::bucket::{self, Entry, LINES_PER_BUCKET};
use crate::StoreError;

/// Size of a bucket value's header.
pub(super) const HEADER: usize = 17;

/// Names every key from one prefix (`[store] key_prefix`).
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }
    pub(super) fn next_id(&self) -> String {
        format!("{}:next_id", self.prefix)
    }
    pub(super) fn hosts(&self) -> String {
        format!("{}:hosts", self.prefix)
    }
    pub(super) fn by_last(&self) -> String {
        format!("{}:by_last", self.prefix)
    }
    pub(super) fn channel(&self) -> String {
        format!("{}:written", self.prefix)
    }
    pub(super) fn ready(&self) -> String {
        format!("{}:ready", self.prefix)
    }
    pub(super) fn files(&self, host: &str) -> String {
        format!("{}:{{h:{host}}}:files", self.prefix)
    }
    pub(super) fn gens(&self, host: &str, file: &str) -> String {
        format!("{}:{{h:{host}}}:gens:{file}", self.prefix)
    }
    pub(super) fn meta(&self, id: u64) -> String {
        format!("{}:{{g{id}}}:m", self.prefix)
    }
    pub(super) fn bucket(&self, id: u64, bucket: u64) -> String {
        format!("{}:{{g{id}}}:{bucket}", self.prefix)
    }
}

/// The message published for a write: `<host length>:<host><file>`, so any byte in a name
/// is unambiguous.
pub(super) fn written_message(host: &str, file: &str) -> String {
    format!("{}:{host}{file}", host.len())
}

/// Splits a published message back into (host, file).
pub(super) fn parse_written(msg: &[u8]) -> Option<(String, String)> {
    let colon = msg.iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&msg[..colon]).ok()?.parse().ok()?;
    let rest = msg.get(colon + 1..)?;
    let (host, file) = rest.split_at_checked(len)?;
    Some((
        String::from_utf8(host.to_vec()).ok()?,
        String::from_utf8(file.to_vec()).ok()?,
    ))
}

/// A stored bucket value, decoded.
#[derive(Debug)]
pub(super) struct Bucket<'a> {
    /// When the bucket's lines were first and last received, in ms.
    pub(super) first_ms: u64,
    pub(super) last_ms: u64,
    pub(super) entries: Vec<Entry<'a>>,
}

/// The first and last receive times (ms) in a bucket value's header.
pub(super) fn header_times(head: &[u8]) -> Option<(u64, u64)> {
    let f = |r: std::ops::Range<usize>| -> Option<u64> {
        Some(f64::from_be_bytes(head.get(r)?.try_into().ok()?) as u64)
    };
    Some((f(1..9)?, f(9..17)?))
}

/// Decodes a bucket value; `what` names it in the error.
pub(super) fn decode_bucket<'a>(v: &'a [u8], what: &str) -> Result<Bucket<'a>, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("{what}: bad bucket value"));
    if v.len() < HEADER {
        return Err(corrupt());
    }
    let (first_ms, last_ms) = header_times(v).ok_or_else(corrupt)?;
    let entries = bucket::decode(&v[HEADER..]).ok_or_else(corrupt)?;
    if entries.len() != usize::from(v[0]) {
        return Err(corrupt());
    }
    Ok(Bucket {
        first_ms,
        last_ms,
        entries,
    })
}

/// The new entries of one bucket as a write script argument: their encodings, sorted by
/// offset, and how many there are (128 means the old value is replaced unread).
pub(super) fn encode_entries(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.content.len() + 4).sum());
    for e in entries {
        bucket::encode_entry(&mut out, e);
    }
    out
}

/// Buckets `from..=to` cover.
pub(super) fn buckets_of(from: u64, to: u64) -> std::ops::RangeInclusive<u64> {
    from / LINES_PER_BUCKET..=to / LINES_PER_BUCKET
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_messages_round_trip_awkward_names() {
        for (h, f) in [("a", "b"), ("h:1", "/x:y"), ("", "f"), ("é{}", "}{")] {
            let m = written_message(h, f);
            assert_eq!(
                parse_written(m.as_bytes()),
                Some((h.to_owned(), f.to_owned()))
            );
        }
        assert_eq!(parse_written(b"9:ab"), None);
        assert_eq!(parse_written(b"x:ab"), None);
    }

    #[test]
    fn generation_keys_share_one_hash_tag() {
        let k = Keys::new("ls");
        assert_eq!(k.meta(7), "ls:{g7}:m");
        assert_eq!(k.bucket(7, 3), "ls:{g7}:3");
        assert_eq!(k.files("h}x"), "ls:{h:h}x}:files");
        assert!(k.gens("h}x", "f").starts_with("ls:{h:h}"));
    }

    #[test]
    fn bucket_values_decode_and_reject_bad_counts() {
        let e = [
            Entry {
                offset: 1,
                partial: false,
                content: b"one",
            },
            Entry {
                offset: 9,
                partial: true,
                content: b"\xff",
            },
        ];
        let mut v = vec![2u8];
        v.extend_from_slice(&1000f64.to_be_bytes());
        v.extend_from_slice(&2000f64.to_be_bytes());
        v.extend_from_slice(&encode_entries(&e));
        let b = decode_bucket(&v, "t").expect("decodes");
        assert_eq!((b.first_ms, b.last_ms), (1000, 2000));
        assert_eq!(b.entries, e.to_vec());
        v[0] = 3;
        assert!(decode_bucket(&v, "t").is_err());
        assert!(decode_bucket(&v[..5], "t").is_err());
    }
}
