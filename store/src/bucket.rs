//! A bucket: the stored record holding up to [`LINES_PER_BUCKET`] consecutive line numbers.
//!
//! Storing many lines per record is what lifts sled from ~100k records/s to over a million
//! lines/s; merging on write keeps the per-line last-write-wins semantics.
//!
//! Encoding, entries sorted by offset: `u8 offset`, `varint (len << 1 | partial)`, then —
//! when the offset byte's top bit is set — `varint time` (ms since the epoch), then the
//! bytes. An offset is below 128, so the top bit was free: buckets written before lines had
//! a time read as they did, their lines without one.

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
    /// When the line was received (ms since the epoch); `None` in buckets older than times.
    pub ts: Option<u64>,
}

/// The offset byte's flag: a time follows the length.
const HAS_TIME: u8 = 0x80;

/// The order every encoder writes a bucket's entries in: offsets strictly increasing. The
/// readers check it, so a damaged offset byte (any 7-bit value is a valid offset) is a
/// corruption error, not a line served twice or under another number.
#[derive(Debug, Default)]
pub struct Order(Option<u8>);

impl Order {
    /// Whether `offset` may follow the entries seen so far (and notes it).
    pub fn admits(&mut self, offset: u8) -> bool {
        let ok = self.0.is_none_or(|prev| offset > prev);
        self.0 = Some(offset);
        ok
    }

    /// As [`Order::admits`], as the readers' I/O error.
    pub fn check(&mut self, offset: u8) -> std::io::Result<()> {
        if self.admits(offset) {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("entry offsets out of order at {offset}"),
            ))
        }
    }
}

/// Decodes a stored bucket. `None` means the bytes are corrupt.
pub fn decode(mut buf: &[u8]) -> Option<Vec<Entry<'_>>> {
    let mut out = Vec::with_capacity(LINES_PER_BUCKET as usize);
    let mut order = Order::default();
    while let Some((&byte, rest)) = buf.split_first() {
        if !order.admits(byte & !HAS_TIME) {
            return None;
        }
        let (header, rest) = varint(rest)?;
        let (ts, rest) = match byte & HAS_TIME {
            0 => (None, rest),
            _ => varint(rest).map(|(t, r)| (Some(t), r))?,
        };
        let len = usize::try_from(header >> 1).ok()?;
        if rest.len() < len {
            return None;
        }
        let (content, rest) = rest.split_at(len);
        out.push(Entry {
            offset: byte & !HAS_TIME,
            partial: header & 1 == 1,
            content,
            ts,
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
    let mut order = Order::default();
    while pos < end {
        let byte = *block.get(pos)?;
        if !order.admits(byte & !HAS_TIME) {
            return None;
        }
        let (header, rest) = varint(block.get(pos + 1..end)?)?;
        let (ts, rest) = match byte & HAS_TIME {
            0 => (None, rest),
            _ => varint(rest).map(|(t, r)| (Some(t), r))?,
        };
        let len = usize::try_from(header >> 1).ok()?;
        let start = end - rest.len();
        if rest.len() < len {
            return None;
        }
        out.push(super::RawLine {
            number: base + u64::from(byte & !HAS_TIME),
            start,
            end: start + len,
            partial: header & 1 == 1,
            ts,
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
    pub ts: Option<u64>,
}

/// The longest entry header: the offset byte and two 10-byte varints.
pub const MAX_HEADER: usize = 21;

/// Parses the entry header at the start of `buf`, which holds at least [`MAX_HEADER`] bytes
/// or the rest of the bucket: the header and its length. Both backends' piecewise readers
/// go through this (or [`next_header`]), so a corrupt bucket is an error on both, never
/// misnumbered lines.
pub fn parse_header(buf: &[u8]) -> std::io::Result<(Header, usize)> {
    let corrupt =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let (&byte, rest) = buf
        .split_first()
        .ok_or_else(|| corrupt("bucket ends before an entry"))?;
    let (v, rest) =
        varint(rest).ok_or_else(|| corrupt("bucket ends inside a length, or a length too long"))?;
    let (ts, rest) = match byte & HAS_TIME {
        0 => (None, rest),
        _ => varint(rest)
            .map(|(t, r)| (Some(t), r))
            .ok_or_else(|| corrupt("bucket ends inside a time, or a time too long"))?,
    };
    Ok((
        Header {
            offset: byte & !HAS_TIME,
            partial: v & 1 == 1,
            len: v >> 1,
            ts,
        },
        buf.len() - rest.len(),
    ))
}

/// Reads the next entry's header from a cursor; `None` at the end of the bucket.
pub fn next_header(c: &mut impl ByteSource) -> std::io::Result<Option<Header>> {
    // Fast path: the whole header is in the buffer (almost always), parsed from the slice.
    let buffered = c.buffered()?;
    if buffered.len() >= MAX_HEADER {
        let (h, used) = parse_header(buffered)?;
        c.consume(used);
        return Ok(Some(h));
    }
    let corrupt =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let Some(byte) = c.byte()? else {
        return Ok(None);
    };
    let mut read_varint = |what: &str| -> std::io::Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = c
                .byte()?
                .ok_or_else(|| corrupt(&format!("bucket ends inside a {what}")))?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt(&format!("{what} varint too long")))
    };
    let v = read_varint("length")?;
    let ts = match byte & HAS_TIME {
        0 => None,
        _ => Some(read_varint("time")?),
    };
    Ok(Some(Header {
        offset: byte & !HAS_TIME,
        partial: v & 1 == 1,
        len: v >> 1,
        ts,
    }))
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

/// Groups `lines` by bucket (what both backends merge), each stamped with its own time or,
/// lacking one, `ts` (when it was received). An agent's lines come in order, so
/// the common case is one pass; anything else is sorted first (stably, so of two copies of a
/// line the later one is kept). Why not maps: a tree node per few lines was 2–3 % of the
/// aggregator's CPU under a fleet of small batches.
pub fn group<'a>(lines: &'a [logship_wire::Line<'_>], ts: u64) -> Grouped<'a> {
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
            ts: Some(l.ts.unwrap_or(ts)),
        };
        match g.buckets.last_mut() {
            Some((b, entries)) if *b == bucket => entries.push(entry),
            _ => g.buckets.push((bucket, vec![entry])),
        }
    }
    g
}

/// The earliest and latest time of `entries` (`(u64::MAX, 0)` for none): what a bucket's
/// index records, so a search's time window never skips a bucket holding a line inside it,
/// whether the line carries the sender's time or the time it was received.
pub fn time_span(entries: &[Entry<'_>]) -> (u64, u64) {
    entries
        .iter()
        .filter_map(|e| e.ts)
        .fold((u64::MAX, 0), |(lo, hi), t| (lo.min(t), hi.max(t)))
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
    let push_varint = |out: &mut Vec<u8>, mut v: u64| {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    };
    out.push(e.offset | if e.ts.is_some() { HAS_TIME } else { 0 });
    push_varint(out, ((e.content.len() as u64) << 1) | u64::from(e.partial));
    if let Some(ts) = e.ts {
        push_varint(out, ts);
    }
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
            ts: Some(1_796_000_000_000 + u64::from(offset)),
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
                    ts: None,
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
            let g = group(&lines, 7);
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
            ts: Some(0),
        };
        let (enc, _) = merge(&[], &[p]);
        assert_eq!(decode(&enc), Some(vec![p]));
    }

    /// Buckets written before lines had a time (no flag) read as before, and a bucket may
    /// hold both kinds (a line rewritten since): each entry says whether it has a time.
    #[test]
    fn entries_without_a_time_still_decode_beside_entries_with_one() {
        // Written by the previous release: offset, varint(len << 1 | partial), bytes.
        let old = [&[3u8, 3 << 1][..], b"old", &[4u8, (2 << 1) | 1], b"pa"].concat();
        let got = decode(&old).expect("decodes");
        assert_eq!(
            got,
            vec![
                Entry {
                    offset: 3,
                    partial: false,
                    content: b"old",
                    ts: None
                },
                Entry {
                    offset: 4,
                    partial: true,
                    content: b"pa",
                    ts: None
                },
            ]
        );
        let (merged, _) = merge(&got, &[e(4, b"whole"), e(9, b"new")]);
        let back = decode(&merged).expect("decodes");
        assert_eq!(back[0].ts, None);
        assert_eq!(back[1], e(4, b"whole"));
        assert_eq!(back[2], e(9, b"new"));
        // The scan's and the piecewise readers' walks agree.
        let mut lines = Vec::new();
        index_into(&merged, 0, merged.len(), 128, &mut lines).expect("indexes");
        let times: Vec<_> = lines.iter().map(|l| (l.number, l.ts)).collect();
        assert_eq!(
            times,
            vec![(131, None), (132, e(4, b"").ts), (137, e(9, b"").ts)]
        );
        let (h, used) = parse_header(&merged[lines[0].end..]).expect("header");
        assert_eq!((h.offset, h.ts, h.len), (4, e(4, b"").ts, 5));
        assert_eq!(&merged[lines[0].end + used..][..5], b"whole");
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
