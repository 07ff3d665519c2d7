//! The compact binary form: what the agent sends.
//!
//! ```text
//! "LSB1"                         magic
//! varint len, host bytes         UTF-8
//! varint len, file bytes         UTF-8
//! varint len, generation bytes   UTF-8
//! u64 LE  start line             number of the first line
//! u32 LE  count                  patched in by `Writer::finish`
//! count × (varint (len << 1 | partial), bytes)
//! ```
//! Lines are consecutive from `start`. A batcher appends straight into the encoded buffer,
//! so a line is copied once from the file read buffer into the request body.

use std::borrow::Cow;

use crate::{validate_names, DecodeError, FileBatch, Limits, Line, MAX_LINE_NUMBER};

/// First bytes of every compact body.
pub const MAGIC: &[u8; 4] = b"LSB1";

/// Builds one compact body incrementally.
#[derive(Debug, Clone)]
pub struct Writer {
    buf: Vec<u8>,
    count_at: usize,
    count: u32,
    start: u64,
}

impl Writer {
    /// Starts a body for `host`/`file`/`generation` whose first line is `start`.
    pub fn new(host: &str, file: &str, generation: &str, start: u64) -> Self {
        let mut buf = Vec::with_capacity(64 + host.len() + file.len() + generation.len());
        buf.extend_from_slice(MAGIC);
        for s in [host, file, generation] {
            put_varint(&mut buf, s.len() as u64);
            buf.extend_from_slice(s.as_bytes());
        }
        buf.extend_from_slice(&start.to_le_bytes());
        let count_at = buf.len();
        buf.extend_from_slice(&0u32.to_le_bytes());
        Writer {
            buf,
            count_at,
            count: 0,
            start,
        }
    }

    /// Appends the next line (without its `\n`).
    pub fn push(&mut self, line: &[u8], partial: bool) {
        put_varint(
            &mut self.buf,
            ((line.len() as u64) << 1) | u64::from(partial),
        );
        self.buf.extend_from_slice(line);
        self.count += 1;
    }

    /// Lines pushed so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Encoded size so far, in bytes.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes the body can hold before it reallocates.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Makes room for `additional` more bytes, exactly (callers that account for memory
    /// grow it in their own steps instead of the vector's doubling).
    pub fn reserve_exact(&mut self, additional: usize) {
        self.buf.reserve_exact(additional);
    }

    /// Number of the first line.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The finished body.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[self.count_at..self.count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

/// Decodes a compact body without copying line content.
pub fn decode(body: &[u8]) -> Result<FileBatch<'_>, DecodeError> {
    decode_limited(body, &Limits::NONE)
}

/// The line count a compact body announces, read from its header without decoding the
/// lines; `None` if the header is not a compact one.
pub fn line_count(body: &[u8]) -> Option<u32> {
    let mut r = Reader { buf: body, pos: 0 };
    if r.take(MAGIC.len(), "magic").ok()? != MAGIC {
        return None;
    }
    for field in ["host", "file", "generation"] {
        r.string(field).ok()?;
    }
    r.take(8, "start line").ok()?;
    Some(u32::from_le_bytes(fixed(r.take(4, "line count").ok()?)))
}

/// [`decode`] within `limits` (one file and host per body, so lines and line size count).
pub fn decode_limited<'a>(body: &'a [u8], limits: &Limits) -> Result<FileBatch<'a>, DecodeError> {
    let mut r = Reader { buf: body, pos: 0 };
    if r.take(MAGIC.len(), "magic")? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let host = r.string("host")?;
    let file = r.string("file")?;
    let generation = r.string("generation")?;
    validate_names(host, file, generation)?;
    let start = u64::from_le_bytes(fixed(r.take(8, "start line")?));
    let count = u64::from(u32::from_le_bytes(fixed(r.take(4, "line count")?)));
    if count > 0 && start.saturating_add(count - 1) > MAX_LINE_NUMBER {
        return Err(DecodeError::Invalid {
            field: "start",
            reason: format!(
                "lines {start}+{count} exceed the largest line number {MAX_LINE_NUMBER}"
            ),
        });
    }
    if count > limits.max_lines as u64 {
        return Err(limits.too_many_lines());
    }
    // Every line takes at least one byte, so a lying count cannot make us allocate much.
    if count > (body.len() - r.pos) as u64 {
        return Err(DecodeError::Truncated(
            "fewer bytes than the announced line count",
        ));
    }
    let mut lines = Vec::with_capacity(count as usize);
    for i in 0..count {
        let header = r.varint("line length")?;
        let len = usize::try_from(header >> 1)
            .map_err(|_| DecodeError::Truncated("line length out of range"))?;
        limits.check_line(start + i, len)?;
        let content = r.take(len, "line content")?;
        lines.push(Line {
            number: start + i,
            content: Cow::Borrowed(content),
            partial: header & 1 == 1,
            ts: None,
        });
    }
    if r.pos != body.len() {
        return Err(DecodeError::Trailing(body.len() - r.pos));
    }
    Ok(FileBatch {
        host: Cow::Borrowed(host),
        file: Cow::Borrowed(file),
        generation: Cow::Borrowed(generation),
        lines,
    })
}

fn fixed<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    a
}

pub(crate) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes read so far.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated(what))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Truncated("varint longer than 10 bytes"))
    }

    pub(crate) fn string(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let len = self.varint(field)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated(field))?;
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::Invalid {
            field,
            reason: "not valid UTF-8".into(),
        })
    }
}

/// Splits a compact body into two halves, every line keeping its number (a batch the sink
/// refused as too large is sent again as two); `None` for a single line or a body that does
/// not decode.
pub fn split(body: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let b = decode(body).ok()?;
    if b.lines.len() < 2 {
        return None;
    }
    let (a, c) = b.lines.split_at(b.lines.len() / 2);
    let enc = |lines: &[crate::Line<'_>]| {
        let mut w = Writer::new(&b.host, &b.file, &b.generation, lines[0].number);
        for l in lines {
            w.push(&l.content, l.partial);
        }
        w.finish()
    };
    Some((enc(a), enc(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new("web-1", "/var/log/a.log", "gen", 100);
        w.push(b"plain", false);
        w.push(b"\xff\xfe\0\r\tbytes", false);
        w.push(b"", false);
        w.push(b"partial", true);
        w.finish()
    }

    #[test]
    fn round_trips_any_bytes() {
        let body = sample();
        let b = decode(&body).expect("decodes");
        assert_eq!(
            (b.host.as_ref(), b.file.as_ref()),
            ("web-1", "/var/log/a.log")
        );
        let got: Vec<(u64, &[u8], bool)> = b
            .lines
            .iter()
            .map(|l| (l.number, l.content.as_ref(), l.partial))
            .collect();
        assert_eq!(
            got,
            vec![
                (100, &b"plain"[..], false),
                (101, &b"\xff\xfe\0\r\tbytes"[..], false),
                (102, &b""[..], false),
                (103, &b"partial"[..], true),
            ]
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let body = sample();
        for cut in 0..body.len() {
            assert!(decode(&body[..cut]).is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn trailing_bytes_and_huge_counts_are_rejected() {
        let mut body = sample();
        body.push(0);
        assert_eq!(decode(&body), Err(DecodeError::Trailing(1)));
        let mut w = Writer::new("h", "/f", "g", 0);
        w.push(b"x", false);
        let mut body = w.finish();
        let at = body.len() - 2 - 4;
        body[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&body), Err(DecodeError::Truncated(_))));
    }

    #[test]
    fn line_numbers_past_the_limit_are_rejected() {
        let mut w = Writer::new("h", "/f", "g", MAX_LINE_NUMBER);
        w.push(b"ok", false);
        assert!(decode(&w.clone().finish()).is_ok());
        w.push(b"too far", false);
        assert!(matches!(
            decode(&w.finish()),
            Err(DecodeError::Invalid { field: "start", .. })
        ));
    }

    #[test]
    fn mutated_bodies_error_or_reencode_identically() {
        let body = sample();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut b = body.clone();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % b.len();
                b[i] = (seed >> 32) as u8;
            }
            // Whatever decodes must re-encode to the very same bytes: nothing is misread.
            if let Ok(d) = decode(&b) {
                let mut w = Writer::new(&d.host, &d.file, &d.generation, d.lines[0].number);
                for l in &d.lines {
                    w.push(&l.content, l.partial);
                }
                assert_eq!(w.finish(), b);
            }
        }
    }

    #[test]
    fn split_keeps_every_line_and_number() {
        let mut w = Writer::new("h", "/f", "g", 10);
        for l in [&b"a"[..], b"b", b"c"] {
            w.push(l, false);
        }
        let (x, y) = split(&w.finish()).expect("splits");
        let (x, y) = (decode(&x).expect("x"), decode(&y).expect("y"));
        let nums: Vec<u64> = x.lines.iter().chain(&y.lines).map(|l| l.number).collect();
        assert_eq!(nums, vec![10, 11, 12]);
        let mut one = Writer::new("h", "/f", "g", 0);
        one.push(b"only", false);
        assert!(split(&one.finish()).is_none());
    }
}
