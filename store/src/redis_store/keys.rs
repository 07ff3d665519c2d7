//! The redis backend's key layout and value codecs, in one place.
//!
//! ```text
//! <p>:next_id                     STRING  INCR source of generation ids (unique across processes)
//! <p>:hosts                       ZSET    every host, score 0, read with ZRANGEBYLEX (paging)
//! <p>:by_last                     ZSET    generation id → last write (ms); retention's candidates
//! <p>:written                     channel PUBLISH on every write: followers on query nodes wake
//! <p>:layout                      STRING  "2" once legacy keys of hosts with `}` were copied
//! <p>:{<tag>}:files               ZSET    the host's files, score 0, ZRANGEBYLEX
//! <p>:{<tag>}:gens:<file>         HASH    generation name → id
//!                                         (<tag>: `h:<host>`, or `H:<escaped host>` for a
//!                                         host with `}`: see `host_tag`)
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
//! creating a generation and listing it are atomic together. Hash tags end at the first `}`,
//! so a host's `}` is escaped (`host_tag`): any host and file bytes map to distinct keys.
//! Nothing on the write or download path scans keys: a generation's buckets are
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
        format!("{}:{{{}}}:files", self.prefix, host_tag(host))
    }
    pub(super) fn gens(&self, host: &str, file: &str) -> String {
        format!("{}:{{{}}}:gens:{file}", self.prefix, host_tag(host))
    }
    /// Set once the keys of hosts named with a `}` have been copied from the layout before
    /// `H:` tags ([`host_tag`]).
    pub(super) fn layout(&self) -> String {
        format!("{}:layout", self.prefix)
    }
    /// The keys the layout before `H:` tags gave a host's file index and generation map:
    /// ambiguous for a host with a `}`, read only to copy them.
    pub(super) fn legacy_files(&self, host: &str) -> String {
        format!("{}:{{h:{host}}}:files", self.prefix)
    }
    pub(super) fn legacy_gens(&self, host: &str, file: &str) -> String {
        format!("{}:{{h:{host}}}:gens:{file}", self.prefix)
    }
    pub(super) fn meta(&self, id: u64) -> String {
        format!("{}:{{g{id}}}:m", self.prefix)
    }
    pub(super) fn bucket(&self, id: u64, bucket: u64) -> String {
        format!("{}:{{g{id}}}:{bucket}", self.prefix)
    }
}

/// The hash tag of a host's keys: `h:<host>`, or for a host with a `}` in its name
/// `H:<host>` with `%` and `}` percent-escaped.
///
/// Redis ends a hash tag at the first `}`, and the old layout put the raw host there: host
/// `x}:gens:y` with file `z` and host `x` with file `y}:gens:z` had one generation map, and
/// the second writer's lines overwrote the first's (issue 29.3). An escaped host has no `}`,
/// so the tag ends right after it and the rest of the key is the file, whatever its bytes.
/// Hosts without `}` (every DNS name) keep the key they always had.
pub(super) fn host_tag(host: &str) -> std::borrow::Cow<'_, str> {
    if !host.contains('}') {
        return std::borrow::Cow::Owned(format!("h:{host}"));
    }
    let mut tag = String::with_capacity(host.len() + 8);
    tag.push_str("H:");
    for c in host.chars() {
        match c {
            '%' => tag.push_str("%25"),
            '}' => tag.push_str("%7D"),
            c => tag.push(c),
        }
    }
    std::borrow::Cow::Owned(tag)
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
    let corrupt = || StoreError::corrupt(format!("{what}: bad bucket value"));
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
        assert_eq!(
            k.files("web-1"),
            "ls:{h:web-1}:files",
            "the layout of every DNS name"
        );
        assert_eq!(k.gens("web-1", "/f"), "ls:{h:web-1}:gens:/f");
        assert_eq!(k.files("h}x"), "ls:{H:h%7Dx}:files");
        assert_eq!(k.gens("h}x%", "f"), "ls:{H:h%7Dx%25}:gens:f");
    }

    #[test]
    fn names_with_braces_get_distinct_keys_in_one_slot_per_host() {
        let k = Keys::new("ls");
        // The collision of issue 29.3, and its relatives.
        let pairs = [
            ("x", "y}:gens:z"),
            ("x}:gens:y", "z"),
            ("x}", "y"),
            ("x", "}y"),
            ("x%7D", "y"),
            ("x%", "7D}y"),
            ("x}:files", ""),
            ("x", ""),
        ];
        let mut seen = std::collections::HashSet::new();
        for (h, f) in pairs {
            assert!(seen.insert(k.gens(h, f)), "{h:?} {f:?}: {}", k.gens(h, f));
            assert!(seen.insert(k.files(h)) || h == "x", "{h:?}");
            // The hash tag is the whole (escaped) host: the same for both of its keys.
            let tag = |key: &str| {
                let open = key.find('{').expect("{");
                let close = open + key[open..].find('}').expect("}");
                key[open + 1..close].to_owned()
            };
            assert_eq!(tag(&k.gens(h, f)), tag(&k.files(h)));
            assert_eq!(tag(&k.files(h)), host_tag(h));
        }
    }

    #[test]
    fn bucket_values_decode_and_reject_bad_counts() {
        let e = [
            Entry {
                offset: 1,
                partial: false,
                content: b"one",
                ts: Some(1_000),
            },
            Entry {
                offset: 9,
                partial: true,
                content: b"\xff",
                ts: None,
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
