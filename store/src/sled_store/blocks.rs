//! Compressed blocks: the form buckets take once sealed (see `seal.rs`).
//!
//! A block holds consecutive buckets of one generation, up to [`BLOCK_RAW_BYTES`] of raw
//! bucket encoding, compressed with zstd as one frame (with its checksum, so a damaged block
//! is an error, never wrong lines). Inside the frame the buckets are stored by column — every
//! entry's header (offset, length, time as a delta from the entry before), then every line's
//! bytes — so the times, which a write shares across its lines, compress to almost nothing
//! and the content compresses as the log it is. Readers get the buckets back in their usual
//! encoding (`bucket.rs`), so every reader works on sealed data unchanged.
//!
//! ```text
//! stored:  u8 version (1) ‖ u16 filter length ‖ filter (trigram bitmap) ‖ zstd frame of:
//!          varint buckets ‖ varint entries, per bucket ‖
//!          per entry: u8 offset | time flag, varint (len << 1 | partial), [zigzag varint Δtime] ‖
//!          every entry's bytes
//! ```
//!
//! Why 256 KiB: zstd -3 of the benchmark's realistic logs in 64 KiB pieces takes 1.05–1.18×
//! the bytes of the whole file compressed at once, in 256 KiB pieces 1.04–1.13×, in 1 MiB
//! pieces 0.99–1.04× (measured with `split -b` and `zstd -3`); 256 KiB keeps what a reader
//! holds per block small (a download holds at most a few) for most of the ratio.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::segments::Loc;
use crate::bucket::{self, Entry};

/// Raw bucket bytes gathered into one block.
pub(super) const BLOCK_RAW_BYTES: usize = 256 * 1024;
/// The zstd level blocks are compressed at. On the benchmark's realistic logs in 256 KiB
/// blocks (`zstd -b1 -e4 -B256KiB`): level 1 8.07× at 650 MB/s, 2 8.08× at 550, 3 7.82× at
/// 560, 4 8.75× at 183 — level 1 costs the least CPU for as much as 2 and 3.
const LEVEL: i32 = 1;
/// The stored form's first byte.
const VERSION: u8 = 1;
/// Most bytes a block's filter takes: 32,768 bits for a full block, whose ~20,000 distinct
/// trigrams set about half of them; a 24-byte literal's 22 trigrams then all hit in a block
/// without it about once in 10⁶ (if independent; real text is less kind). ~10 % of the
/// block's compressed size.
const MAX_FILTER_BYTES: usize = 4096;
/// Most a block may decompress to: a bucket over 1 MiB is never sealed (see `seal.rs`), so a
/// block holds at most 256 KiB plus one bucket, and anything that claims more is damaged.
const MAX_DECODED: usize = BLOCK_RAW_BYTES + (2 << 20);
/// Decoded blocks kept for readers: a download or search walks a block's buckets one call
/// at a time, and each must not decompress the block again.
const CACHED_BLOCKS: usize = 16;

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("block: {what}"))
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(buf: &mut &[u8]) -> std::io::Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or_else(|| invalid("truncated"))?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(invalid("varint too long"))
}

fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encodes `buckets` (raw bucket encodings, in slot order) as a stored block.
pub(super) fn encode(buckets: &[Vec<u8>]) -> std::io::Result<Vec<u8>> {
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let Scratch {
            compressor,
            headers,
            raw,
            content,
        } = &mut *scratch;
        headers.clear();
        raw.clear();
        content.clear();
        let mut prev_ts = 0u64;
        let mut filter = Filter::sized(buckets.iter().map(Vec::len).sum());
        push_varint(raw, buckets.len() as u64);
        for b in buckets {
            let entries =
                bucket::decode(b).ok_or_else(|| invalid("a bucket to seal is corrupt"))?;
            push_varint(raw, entries.len() as u64);
            for e in &entries {
                headers.push(e.offset | if e.ts.is_some() { 0x80 } else { 0 });
                push_varint(
                    headers,
                    ((e.content.len() as u64) << 1) | u64::from(e.partial),
                );
                if let Some(ts) = e.ts {
                    push_varint(headers, zigzag(ts.wrapping_sub(prev_ts) as i64));
                    prev_ts = ts;
                }
                content.extend_from_slice(e.content);
                filter.add(e.content);
            }
        }
        raw.extend_from_slice(headers);
        raw.extend_from_slice(content);

        let compressor = match compressor {
            Some(c) => c,
            None => {
                let mut c = zstd::bulk::Compressor::new(LEVEL)?;
                c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
                compressor.insert(c)
            }
        };
        // `compress_to_buffer` fills a buffer from its start: the version goes in after.
        headers.clear();
        headers.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        compressor.compress_to_buffer(&raw[..], headers)?;
        let mut out = Vec::with_capacity(3 + filter.0.len() + headers.len());
        out.push(VERSION);
        out.extend_from_slice(&(filter.0.len() as u16).to_be_bytes());
        out.extend_from_slice(&filter.0);
        out.extend_from_slice(headers);
        Ok(out)
    })
}

/// The sealer's reusable state: its zstd context (~1 MiB to set up) and buffers, kept per
/// thread (one sealer thread; a test's blocking thread) instead of allocated per block.
#[derive(Default)]
struct Scratch {
    compressor: Option<zstd::bulk::Compressor<'static>>,
    headers: Vec<u8>,
    raw: Vec<u8>,
    content: Vec<u8>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// A block decompressed: its buckets in the usual encoding, back to back.
#[derive(Debug)]
pub(super) struct Decoded {
    data: Vec<u8>,
    /// (start, len) of each slot's bucket in `data`.
    slots: Vec<(usize, usize)>,
}

impl Decoded {
    /// The bucket in `slot`, in the usual bucket encoding.
    pub(super) fn bucket(&self, slot: u32) -> std::io::Result<&[u8]> {
        let &(at, len) = self
            .slots
            .get(slot as usize)
            .ok_or_else(|| invalid("no such slot"))?;
        Ok(&self.data[at..at + len])
    }
}

/// Splits a stored block into its filter and its zstd frame.
fn split(stored: &[u8]) -> std::io::Result<(&[u8], &[u8])> {
    let (&version, rest) = stored.split_first().ok_or_else(|| invalid("empty"))?;
    if version != VERSION {
        return Err(invalid(&format!("unknown version {version}")));
    }
    let (len, rest) = rest
        .split_at_checked(2)
        .ok_or_else(|| invalid("truncated"))?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if len > MAX_FILTER_BYTES || !len.is_power_of_two() {
        return Err(invalid("filter size"));
    }
    rest.split_at_checked(len)
        .ok_or_else(|| invalid("truncated"))
}

/// A block's filter: a bitmap of the trigrams of its lines (one hash each). A search for a
/// literal reads the block only if every trigram of the literal is set: a rare word skips
/// almost every block without decompressing it. Trigrams rather than words, because a
/// search matches any substring, as grep does.
struct Filter(Vec<u8>);

impl Filter {
    /// An empty filter for about `content` bytes of lines (at most [`MAX_FILTER_BYTES`]).
    fn sized(content: usize) -> Filter {
        Filter(vec![
            0u8;
            (content / 16)
                .next_power_of_two()
                .clamp(64, MAX_FILTER_BYTES)
        ])
    }

    /// Adds a line's trigrams: the last three bytes rolled in a register, one multiply
    /// and one bit per byte (a hash of each `windows(3)` slice cost as much as zstd).
    fn add(&mut self, line: &[u8]) {
        let shift = shift_of(self.0.len());
        let bits = self.0.as_mut_slice();
        let mask = bits.len() - 1;
        let (Some(&a), Some(&b), Some(rest)) = (line.first(), line.get(1), line.get(2..)) else {
            return;
        };
        let mut x = u32::from(a) << 8 | u32::from(b);
        for &c in rest {
            x = (x << 8 | u32::from(c)) & 0xff_ffff;
            let h = (x.wrapping_mul(0x9E37_79B1) >> shift) as usize;
            if let Some(byte) = bits.get_mut((h >> 3) & mask) {
                *byte |= 1 << (h & 7);
            }
        }
    }
}

/// How far a trigram's hash is shifted for a filter of `bytes` bytes (a power of two).
fn shift_of(bytes: usize) -> u32 {
    32 - (bytes * 8).trailing_zeros()
}

/// The bit of trigram `w` in a filter of `bytes` bytes, as [`Filter::add`] sets it.
fn bit(w: &[u8], bytes: usize) -> usize {
    let x = u32::from(w[0]) << 16 | u32::from(w[1]) << 8 | u32::from(w[2]);
    (x.wrapping_mul(0x9E37_79B1) >> shift_of(bytes)) as usize
}

/// Whether a line of the stored block may contain `literal` (always, for a literal shorter
/// than three bytes or a block that cannot be read: the reader reports that).
pub(super) fn may_contain(stored: &[u8], literal: &[u8]) -> bool {
    let Ok((filter, _)) = split(stored) else {
        return true;
    };
    literal.windows(3).all(|w| {
        let b = bit(w, filter.len());
        filter[b / 8] & (1 << (b % 8)) != 0
    })
}

/// Decompresses a stored block into `raw` (cleared first; its memory reused).
fn decompress(stored: &[u8], raw: &mut Vec<u8>) -> std::io::Result<()> {
    let (_, frame) = split(stored)?;
    // The frame says its size (the compressor knows it); one that claims more than a block
    // can hold is damaged, and is not given the memory.
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) if n <= MAX_DECODED as u64 => n as usize,
        Ok(Some(_)) => return Err(invalid("decompresses past its bound")),
        _ => return Err(invalid("no frame size")),
    };
    raw.clear();
    raw.reserve(size);
    DECOMPRESSOR.with(|cell| {
        let mut d = cell.borrow_mut();
        let d = match &mut *d {
            Some(d) => d,
            None => d.insert(zstd::bulk::Decompressor::new()?),
        };
        d.decompress_to_buffer(frame, raw)
            .map_err(|e| invalid(&e.to_string()))
    })?;
    if raw.len() != size {
        return Err(invalid("size differs from the frame's"));
    }
    Ok(())
}

/// One entry of a decompressed block: its line's place in the block's content.
struct Head {
    offset: u8,
    partial: bool,
    ts: Option<u64>,
    /// Where the line's bytes lie in the decompressed block.
    start: usize,
    end: usize,
}

/// Parses a decompressed block: each slot's entries (in order, offsets checked).
fn parse(raw: &[u8]) -> std::io::Result<Vec<Vec<Head>>> {
    let mut cur = raw;
    let n = take_varint(&mut cur)? as usize;
    if n > raw.len() {
        return Err(invalid("bucket count"));
    }
    let mut counts = Vec::with_capacity(n);
    for _ in 0..n {
        counts.push(take_varint(&mut cur)? as usize);
    }
    let total: usize = counts.iter().sum();
    if total > raw.len() {
        return Err(invalid("entry count"));
    }
    let mut heads = Vec::with_capacity(total);
    let mut prev_ts = 0u64;
    for _ in 0..total {
        let (&byte, rest) = cur.split_first().ok_or_else(|| invalid("truncated"))?;
        cur = rest;
        let v = take_varint(&mut cur)?;
        let ts = if byte & 0x80 != 0 {
            let t = prev_ts.wrapping_add(unzigzag(take_varint(&mut cur)?) as u64);
            prev_ts = t;
            Some(t)
        } else {
            None
        };
        let len = usize::try_from(v >> 1).map_err(|_| invalid("length"))?;
        heads.push((byte & 0x7f, v & 1 == 1, ts, len));
    }
    let mut pos = raw.len() - cur.len();
    let content_len = heads
        .iter()
        .try_fold(0usize, |a, h| a.checked_add(h.3))
        .ok_or_else(|| invalid("content length"))?;
    if content_len != cur.len() {
        return Err(invalid("content length"));
    }
    let mut heads = heads.into_iter();
    let mut slots = Vec::with_capacity(n);
    for count in counts {
        let mut order = bucket::Order::default();
        let mut slot = Vec::with_capacity(count);
        for (offset, partial, ts, len) in heads.by_ref().take(count) {
            order.check(offset)?;
            slot.push(Head {
                offset,
                partial,
                ts,
                start: pos,
                end: pos + len,
            });
            pos += len;
        }
        slots.push(slot);
    }
    Ok(slots)
}

/// Decodes a stored block; a damaged one is an `InvalidData` error.
pub(super) fn decode(stored: &[u8]) -> std::io::Result<Decoded> {
    let mut raw = Vec::new();
    decompress(stored, &mut raw)?;
    let heads = parse(&raw)?;
    let mut data = Vec::with_capacity(raw.len() + heads.iter().map(Vec::len).sum::<usize>() * 8);
    let mut slots = Vec::with_capacity(heads.len());
    for slot in &heads {
        let start = data.len();
        for h in slot {
            bucket::encode_entry(
                &mut data,
                &Entry {
                    offset: h.offset,
                    partial: h.partial,
                    content: &raw[h.start..h.end],
                    ts: h.ts,
                },
            );
        }
        slots.push((start, data.len() - start));
    }
    Ok(Decoded { data, slots })
}

/// For a search's scan: decompresses the block into `data` and lists in `lines` the lines of
/// the `wanted` slots (slot, bucket number), in slot order, where they lie in `data` — the
/// block's own bytes, nothing re-encoded or copied. Slots not wanted (buckets rewritten since
/// they were sealed) are left out.
pub(super) fn scan_lines(
    stored: &[u8],
    wanted: &[(u32, u64)],
    data: &mut Vec<u8>,
    lines: &mut Vec<crate::RawLine>,
) -> std::io::Result<()> {
    decompress(stored, data)?;
    let slots = parse(data)?;
    lines.clear();
    for &(slot, bucket) in wanted {
        let heads = slots
            .get(slot as usize)
            .ok_or_else(|| invalid("no such slot"))?;
        let base = bucket * bucket::LINES_PER_BUCKET;
        lines.extend(heads.iter().map(|h| crate::RawLine {
            number: base + u64::from(h.offset),
            start: h.start,
            end: h.end,
            partial: h.partial,
            ts: h.ts,
        }));
    }
    Ok(())
}

/// The last few blocks readers decoded, by location.
#[derive(Debug, Default)]
pub(crate) struct BlockCache {
    recent: Mutex<VecDeque<(Loc, Arc<Decoded>)>>,
}

impl BlockCache {
    /// The decoded block at `loc`, decoding it with `read` (outside the lock) when not cached.
    pub(super) fn get(
        &self,
        loc: Loc,
        read: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) -> std::io::Result<Arc<Decoded>> {
        if let Some(hit) = self.lock().iter().find(|(l, _)| *l == loc) {
            return Ok(hit.1.clone());
        }
        let decoded = Arc::new(decode(&read()?)?);
        let mut recent = self.lock();
        if recent.len() >= CACHED_BLOCKS {
            recent.pop_front();
        }
        recent.push_back((loc, decoded.clone()));
        Ok(decoded)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Loc, Arc<Decoded>)>> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket_of(lines: &[(u8, &str, Option<u64>, bool)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(offset, s, ts, partial) in lines {
            bucket::encode_entry(
                &mut out,
                &Entry {
                    offset,
                    partial,
                    content: s.as_bytes(),
                    ts,
                },
            );
        }
        out
    }

    /// A bucket of `lines` at offsets 0.., every one received at `ts`.
    fn bucket_of_lines(lines: &[String], ts: Option<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            bucket::encode_entry(
                &mut out,
                &Entry {
                    offset: i as u8,
                    partial: false,
                    content: l.as_bytes(),
                    ts,
                },
            );
        }
        out
    }

    #[test]
    fn buckets_come_back_byte_for_byte() {
        let buckets = vec![
            bucket_of(&[
                (0, "first", Some(1_700_000_000_123), false),
                (1, "", Some(1_700_000_000_123), false),
                (5, "\u{0}\u{ff}binary", Some(1_699_000_000_000), false),
            ]),
            // Written before lines had times, then one line merged in with a time.
            bucket_of(&[(0, "old", None, false), (127, "tail", Some(3), true)]),
            Vec::new(),
        ];
        let stored = encode(&buckets).expect("encode");
        let d = decode(&stored).expect("decode");
        for (slot, b) in buckets.iter().enumerate() {
            assert_eq!(d.bucket(slot as u32).expect("slot"), &b[..], "slot {slot}");
        }
        assert!(d.bucket(3).is_err());
    }

    #[test]
    fn shared_times_cost_almost_nothing_and_logs_compress() {
        let line = |i: u64| {
            format!(
                "2026-12-07T10:00:{:02}Z GET /api/v1/items/{} 200\n",
                i % 60,
                i % 97
            )
        };
        let buckets = |times: bool| -> Vec<Vec<u8>> {
            (0..16u64)
                .map(|b| {
                    let lines: Vec<String> = (0..128).map(|i| line(b * 128 + i)).collect();
                    bucket_of_lines(&lines, times.then_some(1_765_000_000_000 + b * 1_000))
                })
                .collect()
        };
        let raw: usize = buckets(true).iter().map(Vec::len).sum();
        let stored = encode(&buckets(true)).expect("encode").len();
        let untimed = encode(&buckets(false)).expect("encode").len();
        assert!(stored * 10 < raw, "{stored} of {raw}");
        // 2,048 lines, each with a time (shared per write): well under a byte a line.
        assert!(
            stored < untimed + 2048 / 4,
            "{stored} bytes with times, {untimed} without"
        );
    }

    #[test]
    fn the_filter_passes_every_block_holding_a_literal_and_few_others() {
        let lines: Vec<String> = (0..2000)
            .map(|i| {
                format!(
                    "2026-12-07 GET /api/v1/items/{i} id={:08x} ok",
                    i * 2_654_435_761u64 % 4_294_967_291
                )
            })
            .collect();
        let stored = encode(&[bucket_of_lines(&lines[..128], None)]).expect("encode");
        for l in lines.iter().take(128) {
            assert!(may_contain(&stored, l.as_bytes()), "{l}");
            assert!(may_contain(&stored, &l.as_bytes()[10..25]), "{l}");
        }
        let absent = lines[128..]
            .iter()
            .filter(|l| may_contain(&stored, &l.as_bytes()[l.len() - 15..]))
            .count();
        assert!(
            absent < 40,
            "{absent} of 1872 absent literals passed the filter (9 measured)"
        );
        assert!(may_contain(&stored, b"zz"), "too short to filter");
    }

    #[test]
    fn damaged_blocks_are_errors_not_panics() {
        let buckets = vec![bucket_of(&[(0, "some line of a log", Some(5), false)])];
        let stored = encode(&buckets).expect("encode");
        for i in 0..stored.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = stored.clone();
                bad[i] ^= flip;
                if let Ok(d) = decode(&bad) {
                    // The checksum lets nothing through changed.
                    assert_eq!(d.bucket(0).expect("slot"), &buckets[0][..], "byte {i}");
                }
            }
        }
        for cut in 0..stored.len() {
            assert!(decode(&stored[..cut]).is_err(), "cut at {cut}");
        }
    }
}
