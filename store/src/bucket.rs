//! A bucket: the stored record holding up to [`LINES_PER_BUCKET`] consecutive line numbers.
//!
//! Storing many lines per record is what lifts sled from ~100k records/s to over a million
//! lines/s; merging on write keeps the per-line last-write-wins semantics.
//!
//! Encoding, entries sorted by offset: `u8 offset`, `varint (len << 1 | partial)`, bytes.

/// Lines per bucket. Small enough that rewriting a half-full bucket on every small batch
/// stays cheap, large enough that sled sees few, large records.
pub const LINES_PER_BUCKET: u64 = 128;

/// One decoded entry, borrowing its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Line number minus the bucket's first line number.
    pub offset: u8,
    pub partial: bool,
    pub content: &'a [u8],
}

/// Decodes a stored bucket. `None` means the bytes are corrupt.
pub fn decode(mut buf: &[u8]) -> Option<Vec<Entry<'_>>> {
    let mut out = Vec::with_capacity(LINES_PER_BUCKET as usize);
    while let Some((&offset, rest)) = buf.split_first() {
        let (header, rest) = varint(rest)?;
        let len = usize::try_from(header >> 1).ok()?;
        if rest.len() < len || u64::from(offset) >= LINES_PER_BUCKET {
            return None;
        }
        let (content, rest) = rest.split_at(len);
        out.push(Entry {
            offset,
            partial: header & 1 == 1,
            content,
        });
        buf = rest;
    }
    Some(out)
}

/// Appends the lines of the bucket stored at `block[at..at + len]` (its first line number
/// `base`) to `out`, as positions in `block`; `None` if the bytes are corrupt.
pub fn index_into(
    block: &[u8],
    at: usize,
    len: usize,
    base: u64,
    out: &mut Vec<super::RawLine>,
) -> Option<()> {
    let end = at.checked_add(len)?;
    let mut pos = at;
    while pos < end {
        let offset = *block.get(pos)?;
        let (header, rest) = varint(block.get(pos + 1..end)?)?;
        let len = usize::try_from(header >> 1).ok()?;
        let start = end - rest.len();
        if rest.len() < len || u64::from(offset) >= LINES_PER_BUCKET {
            return None;
        }
        out.push(super::RawLine {
            number: base + u64::from(offset),
            start,
            end: start + len,
            partial: header & 1 == 1,
        });
        pos = start + len;
    }
    Some(())
}

/// Bytes of a stored bucket read a little at a time (the sled backend's segment cursor):
/// what [`next_header`] needs, so the codec knows no backend's types.
pub trait ByteSource {
    /// The next byte, or `None` at the end of the bucket.
    fn byte(&mut self) -> std::io::Result<Option<u8>>;
    /// What is buffered from the current position on (empty at the end).
    fn buffered(&mut self) -> std::io::Result<&[u8]>;
    /// Marks `n` buffered bytes as read.
    fn consume(&mut self, n: usize);
}

/// An entry's header as read from a [`ByteSource`]; its content follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub offset: u8,
    pub partial: bool,
    pub len: u64,
}

/// The longest entry header: the offset byte and a 10-byte varint.
pub const MAX_HEADER: usize = 11;

/// Parses the entry header at the start of `buf`, which holds at least [`MAX_HEADER`] bytes
/// or the rest of the bucket: the header and its length. Both backends' piecewise readers
/// go through this (or [`next_header`]), so a corrupt bucket is an error on both, never
/// misnumbered lines.
pub fn parse_header(buf: &[u8]) -> std::io::Result<(Header, usize)> {
    let corrupt =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let (&offset, rest) = buf
        .split_first()
        .ok_or_else(|| corrupt("bucket ends before an entry"))?;
    if u64::from(offset) >= LINES_PER_BUCKET {
        return Err(corrupt("line offset out of range"));
    }
    let (v, rest) =
        varint(rest).ok_or_else(|| corrupt("bucket ends inside a length, or a length too long"))?;
    Ok((
        Header {
            offset,
            partial: v & 1 == 1,
            len: v >> 1,
        },
        buf.len() - rest.len(),
    ))
}

/// Reads the next entry's header from a cursor; `None` at the end of the bucket.
pub fn next_header(c: &mut impl ByteSource) -> std::io::Result<Option<Header>> {
    // Fast path: the whole header is in the buffer (almost always), parsed from the slice.
    let buffered = c.buffered()?;
    if buffered.len() >= 11 {
        let offset = buffered[0];
        if let Some((v, rest)) = varint(&buffered[1..]) {
            if u64::from(offset) < LINES_PER_BUCKET {
                let used = buffered.len() - rest.len();
                c.consume(used);
                return Ok(Some(Header {
                    offset,
                    partial: v & 1 == 1,
                    len: v >> 1,
                }));
            }
        }
    }
    let corrupt =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let Some(offset) = c.byte()? else {
        return Ok(None);
    };
    if u64::from(offset) >= LINES_PER_BUCKET {
        return Err(corrupt("line offset out of range"));
    }
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = c
            .byte()?
            .ok_or_else(|| corrupt("bucket ends inside a length"))?;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(Some(Header {
                offset,
                partial: v & 1 == 1,
                len: v >> 1,
            }));
        }
    }
    Err(corrupt("length varint too long"))
}

/// One file batch's lines grouped by bucket, entries sorted by offset; within a batch a
/// later copy of a line wins, as across batches.
#[derive(Debug, Default)]
pub struct Grouped<'a> {
    /// Buckets in ascending order, each with its entries.
    pub buckets: Vec<(u64, Vec<Entry<'a>>)>,
    /// Lines and content bytes received (copies included).
    pub lines: u64,
    pub bytes: u64,
    /// The highest line number (0 for no lines).
    pub max_line: u64,
}

/// Groups `lines` by bucket (what both backends merge). An agent's lines come in order, so
/// the common case is one pass; anything else is sorted first (stably, so of two copies of a
/// line the later one is kept). Why not maps: a tree node per few lines was 2–3 % of the
/// aggregator's CPU under a fleet of small batches.
pub fn group<'a>(lines: &'a [logship_wire::Line<'_>]) -> Grouped<'a> {
    let mut g = Grouped::default();
    let mut order: Vec<&'a logship_wire::Line<'_>> = lines.iter().collect();
    if !order.windows(2).all(|w| w[0].number < w[1].number) {
        order.sort_by_key(|l| l.number);
    }
    for l in lines {
        g.lines += 1;
        g.bytes += l.content.len() as u64;
        g.max_line = g.max_line.max(l.number);
    }
    for (i, l) in order.iter().enumerate() {
        if order.get(i + 1).is_some_and(|next| next.number == l.number) {
            continue; // a later copy follows
        }
        let bucket = l.number / LINES_PER_BUCKET;
        let entry = Entry {
            offset: (l.number % LINES_PER_BUCKET) as u8,
            partial: l.partial,
            content: &l.content,
        };
        match g.buckets.last_mut() {
            Some((b, entries)) if *b == bucket => entries.push(entry),
            _ => g.buckets.push((bucket, vec![entry])),
        }
    }
    g
}

/// Distinct buckets the lines of `batches` fall in: what a write costs the store (one
/// index entry and one merged record each), whatever the number of lines.
pub fn distinct_buckets(batches: &[logship_wire::FileBatch<'_>]) -> usize {
    let mut total = 0;
    let mut buckets: Vec<u64> = Vec::new();
    for b in batches {
        buckets.clear();
        buckets.extend(b.lines.iter().map(|l| l.number / LINES_PER_BUCKET));
        buckets.sort_unstable();
        buckets.dedup();
        total += buckets.len();
    }
    total
}

/// Appends one entry's encoding.
pub fn encode_entry(out: &mut Vec<u8>, e: &Entry<'_>) {
    out.push(e.offset);
    let mut v = ((e.content.len() as u64) << 1) | u64::from(e.partial);
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out.extend_from_slice(e.content);
}

/// Merges `new` (sorted by offset, no duplicates) over the stored bucket `old`: a new entry
/// replaces an old one at the same offset. Returns the encoding and how many offsets were
/// not present before.
pub fn merge(old: &[Entry<'_>], new: &[Entry<'_>]) -> (Vec<u8>, u64) {
    let size: usize = old.iter().chain(new).map(|e| e.content.len() + 4).sum();
    let mut out = Vec::with_capacity(size);
    let (mut i, mut j, mut added) = (0, 0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.offset == n.offset => {
                encode_entry(&mut out, n);
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if o.offset < n.offset => {
                encode_entry(&mut out, o);
                i += 1;
            }
            (Some(o), None) => {
                encode_entry(&mut out, o);
                i += 1;
            }
            (_, Some(n)) => {
                encode_entry(&mut out, n);
                added += 1;
                j += 1;
            }
            (None, None) => break,
        }
    }
    (out, added)
}

fn varint(buf: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, &buf[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(offset: u8, content: &[u8]) -> Entry<'_> {
        Entry {
            offset,
            partial: false,
            content,
        }
    }

    /// `group` against a model (a map per bucket, last copy wins) over batches in order,
    /// shuffled, and with copies of lines.
    #[test]
    fn group_sorts_by_bucket_and_offset_and_keeps_the_last_copy() {
        use std::collections::BTreeMap;
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..200 {
            let n = rng.usize(0..300);
            let start = rng.u64(0..1000);
            let contents: Vec<String> = (0..n).map(|i| format!("c{round}-{i}")).collect();
            let mut lines: Vec<logship_wire::Line<'_>> = (0..n)
                .map(|i| logship_wire::Line {
                    number: if round % 3 == 0 {
                        start + i as u64
                    } else {
                        start + rng.u64(0..400)
                    },
                    partial: rng.bool(),
                    content: contents[i].as_bytes().into(),
                })
                .collect();
            if round % 3 == 1 {
                rng.shuffle(&mut lines);
            }
            let mut model: BTreeMap<u64, BTreeMap<u8, (bool, Vec<u8>)>> = BTreeMap::new();
            for l in &lines {
                model
                    .entry(l.number / LINES_PER_BUCKET)
                    .or_default()
                    .insert(
                        (l.number % LINES_PER_BUCKET) as u8,
                        (l.partial, l.content.to_vec()),
                    );
            }
            let g = group(&lines);
            let got: BTreeMap<u64, BTreeMap<u8, (bool, Vec<u8>)>> = g
                .buckets
                .iter()
                .map(|(b, es)| {
                    (
                        *b,
                        es.iter()
                            .map(|e| (e.offset, (e.partial, e.content.to_vec())))
                            .collect(),
                    )
                })
                .collect();
            assert_eq!(got, model, "round {round}");
            let buckets: Vec<u64> = g.buckets.iter().map(|(b, _)| *b).collect();
            assert!(buckets.windows(2).all(|w| w[0] < w[1]), "round {round}");
            for (_, es) in &g.buckets {
                assert!(
                    es.windows(2).all(|w| w[0].offset < w[1].offset),
                    "round {round}"
                );
            }
            assert_eq!(g.lines, n as u64);
            assert_eq!(
                g.max_line,
                lines.iter().map(|l| l.number).max().unwrap_or(0)
            );
        }
    }

    #[test]
    fn merge_keeps_order_and_last_write_wins() {
        let (first, added) = merge(&[], &[e(1, b"b"), e(5, b"f")]);
        assert_eq!(added, 2);
        let old = decode(&first).expect("decodes");
        let (merged, added) = merge(&old, &[e(0, b"a"), e(5, b"F"), e(7, b"h")]);
        assert_eq!(added, 2);
        let got = decode(&merged).expect("decodes");
        assert_eq!(got, vec![e(0, b"a"), e(1, b"b"), e(5, b"F"), e(7, b"h")]);
    }

    #[test]
    fn partial_flag_and_odd_bytes_survive() {
        let p = Entry {
            offset: 127,
            partial: true,
            content: b"\0\r\xff",
        };
        let (enc, _) = merge(&[], &[p]);
        assert_eq!(decode(&enc), Some(vec![p]));
    }

    #[test]
    fn corrupt_buckets_are_detected() {
        assert_eq!(decode(&[200, 0]), None, "offset beyond the bucket");
        assert_eq!(
            decode(&[1, 10, b'x']),
            None,
            "content shorter than its length"
        );
        assert_eq!(decode(&[1]), None, "missing header");
    }
}
