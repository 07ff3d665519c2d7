//! The sled backend's key layout and value codecs, in one place.
//!
//! ```text
//! 'H' ‖ host                                          → ()                 host index
//! 'F' ‖ u16 len ‖ host ‖ u16 len ‖ file ‖ generation  → Meta (40 bytes)    one per generation
//! 'L' ‖ id u64 BE ‖ bucket u64 BE                     → IndexValue         where the bucket of
//!                                                       (32, or 48 + 16·k  128 lines is stored
//!                                                        bytes)            (in 1 + k pieces),
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
            return Err(StoreError::corrupt(format!(
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

/// Most pieces a bucket's index value names; a write that would add one more or overlap the
/// lines already there rewrites it as one piece.
pub(super) const MAX_PIECES: usize = 6;
/// Most bytes a bucket may hold in pieces: readers merge the pieces in memory, so they stay
/// within what a reader holds of one bucket anyway (the segment cursor's buffer).
pub(super) const MAX_PIECES_BYTES: u64 = 64 * 1024;

/// Every line offset of a bucket, as a [`IndexValue::present`] map.
pub(super) const FULL: u128 = u128::MAX;

/// A bucket's index value: where its lines are stored and when they were received.
///
/// A bucket written whole is one piece. A bucket that receives its lines a few at a time (a
/// fleet of agents sending small batches) is appended to while it fills instead of rewritten
/// by every write: each write stores only its own lines as a new piece and the value lists
/// the pieces, with a map of the line offsets present so that the next write knows, without
/// reading anything, whether its lines are new. Pieces never share a line offset (a write
/// that would overlap rewrites the bucket whole, keeping last-write-wins), so readers merge
/// them by offset. The write that brings a bucket's last lines rewrites it as one piece, so
/// a full bucket reads in one go.
///
/// ```text
/// piece₀ Loc (16) ‖ first_ms u64 ‖ last_ms u64                           32 bytes
/// piece₀ Loc (16) ‖ first_ms ‖ last_ms ‖ present u128 ‖ piece₁… (16 each)   48 + 16·k bytes
/// piece₀ Loc (16)                                                       16 bytes (before
///                                                                       receive times)
/// block Loc (16) ‖ first_ms ‖ last_ms ‖ slot u32 ‖ raw len u32           40 bytes (sealed)
/// ```
/// The last form is a bucket sealed into a compressed block (`blocks.rs`): the location is
/// the block's, shared by every bucket sealed with it, and `slot` says which of its buckets
/// this is. Every other form reads as raw bucket bytes.
/// The first form is for a bucket that is whole: one piece holding every offset, or written
/// before pieces existed (nothing known of its offsets, so a write to it reads it back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IndexValue {
    /// Never empty; in write order.
    pub(super) pieces: Vec<Loc>,
    /// When the bucket's lines were received, the first write and the last, in ms since the
    /// epoch: a search by receive time skips whole buckets without reading them.
    pub(super) first_ms: u64,
    pub(super) last_ms: u64,
    /// The offsets present (bit `o` for line `base + o`), or `None` when not recorded.
    pub(super) present: Option<u128>,
    /// Set when the bucket lives in a compressed block (then `pieces` is the block alone).
    pub(super) sealed: Option<Sealed>,
}

/// Where in a compressed block a sealed bucket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sealed {
    /// The bucket's place among the block's buckets.
    pub(super) slot: u32,
    /// Its size uncompressed (the raw bucket encoding), for accounting.
    pub(super) raw_len: u32,
}

impl IndexValue {
    /// One piece, for a bucket whose offsets are `present`.
    pub(super) fn whole(loc: Loc, first_ms: u64, last_ms: u64, present: Option<u128>) -> Self {
        IndexValue {
            pieces: vec![loc],
            first_ms,
            last_ms,
            present,
            sealed: None,
        }
    }

    /// A bucket sealed into the block at `block`.
    pub(super) fn in_block(block: Loc, first_ms: u64, last_ms: u64, sealed: Sealed) -> Self {
        IndexValue {
            pieces: vec![block],
            first_ms,
            last_ms,
            present: None,
            sealed: Some(sealed),
        }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(48 + 16 * self.pieces.len());
        v.extend_from_slice(&self.pieces[0].encode());
        v.extend_from_slice(&self.first_ms.to_be_bytes());
        v.extend_from_slice(&self.last_ms.to_be_bytes());
        if let Some(s) = self.sealed {
            v.extend_from_slice(&s.slot.to_be_bytes());
            v.extend_from_slice(&s.raw_len.to_be_bytes());
            return v;
        }
        // A single piece needs no map when it holds every offset or none is recorded. Several
        // always carry one (an unrecorded map reads as full: the next write reads the
        // bucket back, never drops a piece).
        let map = match (self.pieces.len(), self.present) {
            (1, None | Some(FULL)) => None,
            (_, p) => Some(p.unwrap_or(FULL)),
        };
        if let Some(p) = map {
            v.extend_from_slice(&p.to_be_bytes());
            for piece in &self.pieces[1..] {
                v.extend_from_slice(&piece.encode());
            }
        }
        v
    }

    /// `None` if the bytes are not an index value.
    pub(super) fn decode(v: &[u8]) -> Option<Self> {
        let u64_at = |at: usize| v.get(at..at + 8)?.try_into().ok().map(u64::from_be_bytes);
        let loc_at = |at: usize| Loc::decode(v.get(at..at + 16)?);
        match v.len() {
            16 => Some(IndexValue::whole(loc_at(0)?, 0, u64::MAX, None)),
            32 => Some(IndexValue::whole(
                loc_at(0)?,
                u64_at(16)?,
                u64_at(24)?,
                None,
            )),
            40 => {
                let u32_at = |at: usize| v.get(at..at + 4)?.try_into().ok().map(u32::from_be_bytes);
                Some(IndexValue::in_block(
                    loc_at(0)?,
                    u64_at(16)?,
                    u64_at(24)?,
                    Sealed {
                        slot: u32_at(32)?,
                        raw_len: u32_at(36)?,
                    },
                ))
            }
            n if n >= 48 && (n - 48) % 16 == 0 && (n - 48) / 16 < MAX_PIECES => {
                let present = u128::from_be_bytes(v.get(32..48)?.try_into().ok()?);
                let mut pieces = vec![loc_at(0)?];
                for at in (48..n).step_by(16) {
                    pieces.push(loc_at(at)?);
                }
                Some(IndexValue {
                    pieces,
                    first_ms: u64_at(16)?,
                    last_ms: u64_at(24)?,
                    present: Some(present),
                    sealed: None,
                })
            }
            _ => None,
        }
    }

    /// Whether the bucket holds a line at every offset (or was written whole before offsets
    /// were recorded): nothing more will be added to it but resends.
    pub(super) fn is_full(&self) -> bool {
        // No map: one piece written whole (or before maps existed).
        matches!(self.present, None | Some(FULL))
    }

    /// Bytes stored for the bucket, all pieces together (for a sealed bucket, its block's).
    pub(super) fn len(&self) -> u64 {
        self.pieces.iter().map(|l| u64::from(l.len)).sum()
    }
}

/// The offsets of `entries` as a [`IndexValue::present`] map.
pub(super) fn offsets(entries: &[crate::bucket::Entry<'_>]) -> u128 {
    entries.iter().fold(0, |m, e| m | 1u128 << e.offset)
}

/// The generation id in a line key.
pub(super) fn id_of_line_key(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(1..9)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(n: u32) -> Loc {
        Loc {
            segment: n,
            offset: u64::from(n) * 1000,
            len: n + 7,
        }
    }

    #[test]
    fn index_values_round_trip_in_every_form() {
        let whole = IndexValue::whole(loc(1), 5, 9, None);
        assert_eq!(whole.encode().len(), 32);
        let full = IndexValue::whole(loc(1), 5, 9, Some(FULL));
        assert_eq!(full.encode().len(), 32, "a whole bucket needs no map");
        assert_eq!(IndexValue::decode(&full.encode()), Some(whole.clone()));
        let partial = IndexValue::whole(loc(2), 5, 9, Some(0b1011));
        assert_eq!(partial.encode().len(), 48);
        assert_eq!(IndexValue::decode(&partial.encode()), Some(partial));
        let pieces = IndexValue {
            pieces: (1..=MAX_PIECES as u32).map(loc).collect(),
            first_ms: 1,
            last_ms: 2,
            present: Some(FULL),
            sealed: None,
        };
        assert_eq!(pieces.encode().len(), 48 + 16 * (MAX_PIECES - 1));
        assert_eq!(IndexValue::decode(&pieces.encode()), Some(pieces.clone()));
        assert_eq!(
            pieces.len(),
            (1..=MAX_PIECES as u64).map(|n| n + 7).sum::<u64>()
        );
        let sealed = IndexValue::in_block(
            loc(4),
            5,
            9,
            Sealed {
                slot: 3,
                raw_len: 70_000,
            },
        );
        assert_eq!(sealed.encode().len(), 40);
        assert_eq!(IndexValue::decode(&sealed.encode()), Some(sealed));
        // Written before receive times were kept: matches any window.
        assert_eq!(
            IndexValue::decode(&loc(3).encode()),
            Some(IndexValue::whole(loc(3), 0, u64::MAX, None))
        );
    }

    #[test]
    fn pieces_without_a_map_keep_every_piece_and_read_as_full() {
        let v = IndexValue {
            pieces: vec![loc(1), loc(2)],
            first_ms: 1,
            last_ms: 2,
            present: None,
            sealed: None,
        };
        let back = IndexValue::decode(&v.encode()).expect("decodes");
        assert_eq!(back.pieces, v.pieces);
        assert_eq!(back.present, Some(FULL));
    }

    #[test]
    fn malformed_index_values_are_rejected() {
        for len in [0, 15, 17, 33, 39, 41, 47, 49, 48 + 16 * MAX_PIECES] {
            assert_eq!(IndexValue::decode(&vec![0u8; len]), None, "{len} bytes");
        }
    }
}
