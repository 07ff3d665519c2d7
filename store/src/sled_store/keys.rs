//! The sled backend's key layout and value codecs, in one place.
//!
//! ```text
//! 'H' ‖ host                                          → ()                 host index
//! 'F' ‖ u16 len ‖ host ‖ u16 len ‖ file ‖ generation  → Meta (40 bytes)    one per generation
//! 'L' ‖ id u64 BE ‖ bucket u64 BE                     → index value        where the bucket of
//!                                                       (32 bytes)         128 lines is stored,
//!                                                                          and when received
//! 'Z' ‖ "ready"                                       → now (ms)           the readiness probe
//! ```
//! Length-prefixed names keep any byte in a name from colliding with another name; big-endian
//! numbers make one range scan return a generation's lines in order.

use super::segments::Loc;
use crate::StoreError;

pub(super) const HOST: u8 = b'H';
pub(super) const FILE: u8 = b'F';
pub(super) const LINES: u8 = b'L';
/// The key `/readyz` writes to prove the index takes writes (no scan reads the 'Z' range).
pub(super) const PROBE: &[u8] = b"Zready";
/// Per-generation metadata, stored fixed-width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Meta {
    pub(super) id: u64,
    pub(super) lines: u64,
    pub(super) max_line: u64,
    pub(super) first_write_ms: u64,
    pub(super) last_write_ms: u64,
}

impl Meta {
    pub(super) fn encode(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        for (i, v) in [
            self.id,
            self.lines,
            self.max_line,
            self.first_write_ms,
            self.last_write_ms,
        ]
        .into_iter()
        .enumerate()
        {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    pub(super) fn decode(b: &[u8]) -> Result<Self, StoreError> {
        if b.len() != 40 {
            return Err(StoreError::Corrupt(format!(
                "metadata of {} bytes",
                b.len()
            )));
        }
        let n = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_be_bytes(a)
        };
        Ok(Meta {
            id: n(0),
            lines: n(1),
            max_line: n(2),
            first_write_ms: n(3),
            last_write_ms: n(4),
        })
    }
}

fn put_name(key: &mut Vec<u8>, name: &str) {
    // Names are validated to at most 4096 bytes, so a u16 length always fits.
    key.extend_from_slice(&(name.len() as u16).to_be_bytes());
    key.extend_from_slice(name.as_bytes());
}

pub(super) fn file_prefix(host: &str, file: Option<&str>) -> Vec<u8> {
    let mut key = vec![FILE];
    put_name(&mut key, host);
    if let Some(file) = file {
        put_name(&mut key, file);
    }
    key
}

pub(super) fn line_key(id: u64, bucket: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = LINES;
    key[1..9].copy_from_slice(&id.to_be_bytes());
    key[9..17].copy_from_slice(&bucket.to_be_bytes());
    key
}

/// Splits a file key back into (host, file, generation).
pub(super) fn parse_file_key(key: &[u8]) -> Option<(String, String, String)> {
    let mut rest = key.strip_prefix(&[FILE])?;
    let mut take = || {
        let (len, tail) = rest.split_at_checked(2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let (name, tail) = tail.split_at_checked(len)?;
        rest = tail;
        String::from_utf8(name.to_vec()).ok()
    };
    let host = take()?;
    let file = take()?;
    let generation = String::from_utf8(rest.to_vec()).ok()?;
    Some((host, file, generation))
}

/// A bucket's index value: its [`Loc`], then when its lines were received — the first write
/// to the bucket and the last, in ms since the epoch — so a search by receive time skips
/// whole buckets without reading them.
pub(super) fn index_value(loc: &Loc, first_ms: u64, last_ms: u64) -> [u8; 32] {
    let mut v = [0u8; 32];
    v[..16].copy_from_slice(&loc.encode());
    v[16..24].copy_from_slice(&first_ms.to_be_bytes());
    v[24..].copy_from_slice(&last_ms.to_be_bytes());
    v
}

/// When a bucket's lines were received, (first, last) in ms; `(0, u64::MAX)` for an index
/// value written before receive times were kept (it matches any window).
pub(super) fn received(v: &[u8]) -> (u64, u64) {
    let at = |r: std::ops::Range<usize>| {
        v.get(r)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    };
    match (at(16..24), at(24..32)) {
        (Some(first), Some(last)) => (first, last),
        _ => (0, u64::MAX),
    }
}

/// The generation id in a line key.
pub(super) fn id_of_line_key(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?))
}
