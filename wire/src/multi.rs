//! The multi-file compact form (`LSB2`): one host, then a section per file batch, each line
//! with the time the agent read it. What the agent sends to an aggregator that announces it
//! (`X-Logship-Accept: LSB1, LSB2`); [`compact`](crate::compact) (`LSB1`) stays accepted
//! forever and is what the agent falls back to.
//!
//! ```text
//! "LSB2"                         magic
//! varint len, host bytes         UTF-8, one host per body
//! then sections until the body ends:
//!   varint len, file bytes       UTF-8
//!   varint len, generation bytes UTF-8
//!   u64 LE  start line           number of the first line
//!   u32 LE  count                patched in by `Writer::finish`
//!   u64 LE  time of the section  ms since the epoch; 0: none (stamped on receipt)
//!   count × (varint (len << 2 | continues << 1 | partial), bytes,
//!            varint zigzag(time − previous time))
//! ```
//! A time costs one byte a line while lines share a millisecond (or a few ms apart).
//! `continues` marks a line that belongs to the event of the line before it (a stack
//! trace's frames: the source's `multiline` rule); sinks that carry events (Loki, OTLP) join
//! such lines into one entry, and the aggregator stores lines as they are.
//! Sections are self-delimiting, so a sender joins batches of many files by concatenating
//! their sections behind one header ([`section`], [`join`]); a receiver decodes each
//! section on its own, so one that cannot be stored (a bad name, a line over the limit) is
//! refused alone ([`Multi::sections`]).

use std::borrow::Cow;

use crate::compact::{put_varint, Reader};
use crate::{validate_names, DecodeError, FileBatch, Limits, Line, MAX_LINE_NUMBER};

/// First bytes of every multi-file body.
pub const MAGIC: &[u8; 4] = b"LSB2";

/// Whether `body` is in this form.
pub fn is_multi(body: &[u8]) -> bool {
    body.starts_with(MAGIC)
}

/// Builds a body of one section incrementally (the agent's batcher appends into it).
#[derive(Debug, Clone)]
pub struct Writer {
    buf: Vec<u8>,
    count_at: usize,
    count: u32,
    start: u64,
    /// The time of the previous line (the section's time before the first).
    last_ms: u64,
}

impl Writer {
    /// Starts a body for `host`/`file`/`generation` whose first line is `start`, read at
    /// `ms` (ms since the epoch).
    pub fn new(host: &str, file: &str, generation: &str, start: u64, ms: u64) -> Self {
        let mut buf = Vec::with_capacity(64 + host.len() + file.len() + generation.len());
        buf.extend_from_slice(MAGIC);
        for s in [host, file, generation] {
            put_varint(&mut buf, s.len() as u64);
            buf.extend_from_slice(s.as_bytes());
        }
        buf.extend_from_slice(&start.to_le_bytes());
        let count_at = buf.len();
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&ms.to_le_bytes());
        Writer {
            buf,
            count_at,
            count: 0,
            start,
            last_ms: ms,
        }
    }

    /// Appends the next line (without its `\n`), read at `ms`.
    pub fn push(&mut self, line: &[u8], partial: bool, ms: u64) {
        self.push_in_event(line, partial, false, ms);
    }

    /// Appends the next line, `continues` when it belongs to the event of the line before.
    pub fn push_in_event(&mut self, line: &[u8], partial: bool, continues: bool, ms: u64) {
        put_varint(
            &mut self.buf,
            ((line.len() as u64) << 2) | (u64::from(continues) << 1) | u64::from(partial),
        );
        self.buf.extend_from_slice(line);
        let delta = ms.wrapping_sub(self.last_ms) as i64;
        put_varint(&mut self.buf, zigzag(delta));
        self.last_ms = ms;
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

    /// Makes room for `additional` more bytes, exactly (see `compact::Writer`).
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

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The host and the sections of a body (after the header): what [`join`] puts behind
/// another header. `None` if `body` is not in this form.
pub fn section(body: &[u8]) -> Option<(&str, &[u8])> {
    let mut r = Reader::new(body);
    if r.take(MAGIC.len(), "magic").ok()? != MAGIC {
        return None;
    }
    let host = r.string("host").ok()?;
    Some((host, &body[r.pos()..]))
}

/// The header of a body for `host`: [`join`]'s first piece, followed by sections.
pub fn header(host: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(MAGIC.len() + 2 + host.len());
    buf.extend_from_slice(MAGIC);
    put_varint(&mut buf, host.len() as u64);
    buf.extend_from_slice(host.as_bytes());
    buf
}

/// One body holding the sections of `bodies` (all of `host`), in order.
pub fn join<'a>(host: &str, bodies: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = header(host);
    for b in bodies {
        if let Some((_, s)) = section(b) {
            out.extend_from_slice(s);
        }
    }
    out
}

/// The line count of a body's first section, read from its header.
pub fn line_count(body: &[u8]) -> Option<u32> {
    let (_, sections) = section(body)?;
    let mut r = Reader::new(sections);
    r.string("file").ok()?;
    r.string("generation").ok()?;
    r.take(8, "start line").ok()?;
    Some(u32::from_le_bytes(fixed(r.take(4, "line count").ok()?)))
}

/// A decoded body: its host and each section, decoded or refused on its own.
#[derive(Debug)]
pub struct Multi<'a> {
    pub host: &'a str,
    pub sections: Vec<Result<FileBatch<'a>, DecodeError>>,
}

/// Decodes a body within `limits`: the body's framing (a truncated section, a bad host)
/// refuses it whole; what is wrong inside one section (a name, a line number, a line over
/// `max_line_bytes`) refuses that section alone. `max_lines` counts every section's lines,
/// `max_files` the sections.
pub fn decode_limited<'a>(body: &'a [u8], limits: &Limits) -> Result<Multi<'a>, DecodeError> {
    let mut r = Reader::new(body);
    if r.take(MAGIC.len(), "magic")? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let host = r.string("host")?;
    crate::check_name("host", host, crate::MAX_HOST_BYTES)?;
    let mut sections = Vec::new();
    let mut lines_total = 0u64;
    while r.pos() < body.len() {
        if sections.len() >= limits.max_files {
            return Err(DecodeError::TooLarge(format!(
                "more than {} file sections in one request; send fewer",
                limits.max_files
            )));
        }
        let file = r.string("file")?;
        let generation = r.string("generation")?;
        let start = u64::from_le_bytes(fixed(r.take(8, "start line")?));
        let count = u64::from(u32::from_le_bytes(fixed(r.take(4, "line count")?)));
        let base_ms = u64::from_le_bytes(fixed(r.take(8, "section time")?));
        lines_total += count;
        if lines_total > limits.max_lines as u64 {
            return Err(limits.too_many_lines());
        }
        // Every line takes at least two bytes, so a lying count cannot make us allocate much.
        if count > (body.len() - r.pos()) as u64 / 2 {
            return Err(DecodeError::Truncated(
                "fewer bytes than the announced line count",
            ));
        }
        let mut fault = validate_names(host, file, generation).err();
        if fault.is_none() && count > 0 && start.saturating_add(count - 1) > MAX_LINE_NUMBER {
            fault = Some(DecodeError::Invalid {
                field: "start",
                reason: format!(
                    "lines {start}+{count} exceed the largest line number {MAX_LINE_NUMBER}"
                ),
            });
        }
        let mut lines = Vec::with_capacity(if fault.is_none() { count as usize } else { 0 });
        let mut ms = base_ms;
        for i in 0..count {
            let head = r.varint("line length")?;
            let len = usize::try_from(head >> 2)
                .map_err(|_| DecodeError::Truncated("line length out of range"))?;
            let content = r.take(len, "line content")?;
            ms = ms.wrapping_add(unzigzag(r.varint("line time")?) as u64);
            if fault.is_some() {
                continue;
            }
            if let Err(e) = limits.check_line(start + i, len) {
                fault = Some(e);
                lines.clear();
                continue;
            }
            lines.push(Line {
                number: start + i,
                content: Cow::Borrowed(content),
                partial: head & 1 == 1,
                ts: (base_ms != 0).then_some(ms),
            });
        }
        sections.push(match fault {
            Some(e) => Err(e),
            None => Ok(FileBatch {
                host: Cow::Borrowed(host),
                file: Cow::Borrowed(file),
                generation: Cow::Borrowed(generation),
                lines,
            }),
        });
    }
    Ok(Multi { host, sections })
}

/// Decodes a body of exactly one section (what the agent's batcher makes).
pub fn decode_one(body: &[u8]) -> Result<FileBatch<'_>, DecodeError> {
    let mut m = decode_limited(body, &Limits::NONE)?;
    match (m.sections.pop(), m.sections.is_empty()) {
        (Some(s), true) => s,
        _ => Err(DecodeError::invalid(
            "sections",
            "expected a body of exactly one section",
        )),
    }
}

/// The same lines in the single-file form (`LSB1`, without times) for an aggregator that
/// does not take this one.
pub fn to_compact(body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let b = decode_one(body)?;
    let start = b.lines.first().map_or(0, |l| l.number);
    let mut w = crate::compact::Writer::new(&b.host, &b.file, &b.generation, start);
    for l in &b.lines {
        w.push(&l.content, l.partial);
    }
    Ok(w.finish())
}

/// Which lines of a one-section body continue the event of the line before (see the
/// module doc); `None` if it does not decode.
pub fn continues(body: &[u8]) -> Option<Vec<bool>> {
    let (_, sections) = section(body)?;
    let mut r = Reader::new(sections);
    r.string("file").ok()?;
    r.string("generation").ok()?;
    r.take(8, "start line").ok()?;
    let count = u32::from_le_bytes(fixed(r.take(4, "line count").ok()?));
    r.take(8, "section time").ok()?;
    let mut out = Vec::with_capacity(count.min(1 << 20) as usize);
    for _ in 0..count {
        let head = r.varint("line length").ok()?;
        r.take(usize::try_from(head >> 2).ok()?, "line content")
            .ok()?;
        r.varint("line time").ok()?;
        out.push(head & 2 == 2);
    }
    Some(out)
}

/// Splits a one-section body into two halves, every line keeping its number, time and
/// event flag; `None` for a single line or a body that does not decode.
pub fn split(body: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let b = decode_one(body).ok()?;
    let cont = continues(body)?;
    if b.lines.len() < 2 {
        return None;
    }
    let half = b.lines.len() / 2;
    let enc = |lines: &[Line<'_>], cont: &[bool]| {
        let first = lines[0].ts.unwrap_or(0);
        let mut w = Writer::new(&b.host, &b.file, &b.generation, lines[0].number, first);
        for (l, &c) in lines.iter().zip(cont) {
            w.push_in_event(&l.content, l.partial, c, l.ts.unwrap_or(0));
        }
        w.finish()
    };
    Some((
        enc(&b.lines[..half], &cont[..half]),
        enc(&b.lines[half..], &cont[half..]),
    ))
}

fn fixed<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(file: &str, start: u64) -> Vec<u8> {
        let mut w = Writer::new("web-1", file, "gen", start, 1_790_000_000_000);
        w.push(b"plain", false, 1_790_000_000_000);
        w.push(b"\xff\xfe\0\r\tbytes", false, 1_790_000_000_003);
        // A clock that stepped back: the delta is negative, the time still exact.
        w.push(b"", false, 1_789_999_999_000);
        w.push(b"partial", true, 1_790_000_000_001);
        w.finish()
    }

    fn shape(b: &FileBatch<'_>) -> Vec<(u64, Vec<u8>, bool, Option<u64>)> {
        b.lines
            .iter()
            .map(|l| (l.number, l.content.to_vec(), l.partial, l.ts))
            .collect()
    }

    #[test]
    fn round_trips_any_bytes_with_each_lines_time() {
        let body = sample("/var/log/a.log", 100);
        let b = decode_one(&body).expect("decodes");
        assert_eq!(line_count(&body), Some(4));
        assert_eq!((&*b.host, &*b.file), ("web-1", "/var/log/a.log"));
        assert_eq!(
            shape(&b),
            vec![
                (100, b"plain".to_vec(), false, Some(1_790_000_000_000)),
                (
                    101,
                    b"\xff\xfe\0\r\tbytes".to_vec(),
                    false,
                    Some(1_790_000_000_003)
                ),
                (102, b"".to_vec(), false, Some(1_789_999_999_000)),
                (103, b"partial".to_vec(), true, Some(1_790_000_000_001)),
            ]
        );
        // A line a millisecond after the last costs one byte beyond its content.
        let mut w = Writer::new("h", "/f", "g", 0, 5);
        w.push(b"x", false, 5);
        let one = w.encoded_len();
        w.push(b"x", false, 6);
        assert_eq!(w.encoded_len() - one, 3, "length, content, time");
    }

    #[test]
    fn joined_sections_decode_each_and_a_bad_one_is_refused_alone() {
        let a = sample("/a", 0);
        let bad = sample("", 5); // an empty file name
        let c = sample("/c", 7);
        let body = join("web-1", [&a[..], &bad[..], &c[..]]);
        let m = decode_limited(&body, &Limits::NONE).expect("framing is fine");
        assert_eq!(m.host, "web-1");
        assert_eq!(m.sections.len(), 3);
        assert_eq!(m.sections[0].as_ref().map(|b| b.lines.len()), Ok(4));
        assert!(matches!(
            m.sections[1],
            Err(DecodeError::Invalid { field: "file", .. })
        ));
        let c = m.sections[2].as_ref().expect("third stored");
        assert_eq!((&*c.file, c.lines[0].number), ("/c", 7));
        // A line over the limit refuses its section only.
        let limits = Limits {
            max_line_bytes: 8,
            ..Limits::NONE
        };
        let m = decode_limited(&body, &limits).expect("framing is fine");
        assert!(matches!(m.sections[0], Err(DecodeError::TooLarge(_))));
        assert!(matches!(m.sections[1], Err(DecodeError::Invalid { .. })));
        assert!(matches!(m.sections[2], Err(DecodeError::TooLarge(_))));
        let mut short = Writer::new("web-1", "/s", "g", 0, 1);
        short.push(b"ok", false, 1);
        let body = join("web-1", [&short.finish()[..], &a[..]]);
        let m = decode_limited(&body, &limits).expect("framing is fine");
        assert!(m.sections[0].is_ok());
        assert!(matches!(m.sections[1], Err(DecodeError::TooLarge(_))));
    }

    #[test]
    fn event_flags_survive_a_split_and_are_ignored_by_the_decoder() {
        let mut w = Writer::new("h", "/f", "g", 0, 1);
        w.push_in_event(b"Exception in thread main", false, false, 1);
        w.push_in_event(b"\tat a.B(B.java:1)", false, true, 1);
        w.push_in_event(b"next", false, false, 2);
        w.push_in_event(b"  more", false, true, 2);
        let body = w.finish();
        assert_eq!(continues(&body), Some(vec![false, true, false, true]));
        let b = decode_one(&body).expect("decodes");
        assert_eq!(&b.lines[1].content[..], b"\tat a.B(B.java:1)");
        assert!(!b.lines[1].partial);
        let (x, y) = split(&body).expect("splits");
        assert_eq!(continues(&x), Some(vec![false, true]));
        assert_eq!(continues(&y), Some(vec![false, true]));
    }

    #[test]
    fn request_wide_limits_count_every_section() {
        let body = join("h", [&sample("/a", 0)[..], &sample("/b", 0)[..]]);
        let lines = Limits {
            max_lines: 7,
            ..Limits::NONE
        };
        assert!(matches!(
            decode_limited(&body, &lines),
            Err(DecodeError::TooLarge(_))
        ));
        let files = Limits {
            max_files: 1,
            ..Limits::NONE
        };
        assert!(matches!(
            decode_limited(&body, &files),
            Err(DecodeError::TooLarge(_))
        ));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let body = join("h", [&sample("/a", 0)[..], &sample("/b", 9)[..]]);
        let whole = header("h").len();
        let first_end = whole + section(&sample("/a", 0)).expect("section").1.len();
        for cut in 0..body.len() {
            let r = decode_limited(&body[..cut], &Limits::NONE);
            // Cut between sections, the body is whole sections: that decodes.
            if cut == whole || cut == first_end {
                assert!(r.is_ok(), "cut at {cut}");
            } else {
                assert!(r.is_err(), "cut at {cut} decoded");
            }
        }
    }

    #[test]
    fn mutated_bodies_never_panic() {
        let body = join("h", [&sample("/a", 0)[..], &sample("/b", 9)[..]]);
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
            let _ = decode_limited(&b, &Limits::NONE);
        }
    }

    #[test]
    fn the_old_form_and_halves_keep_every_line() {
        let body = sample("/f", 10);
        let old = to_compact(&body).expect("converts");
        let b = crate::compact::decode(&old).expect("old form decodes");
        let want: Vec<(u64, Vec<u8>, bool, Option<u64>)> = shape(&decode_one(&body).expect("new"))
            .into_iter()
            .map(|(n, c, p, _)| (n, c, p, None))
            .collect();
        assert_eq!(shape(&b), want);
        let (x, y) = split(&body).expect("splits");
        let (x, y) = (decode_one(&x).expect("x"), decode_one(&y).expect("y"));
        let mut halves = shape(&x);
        halves.extend(shape(&y));
        assert_eq!(halves, shape(&decode_one(&body).expect("whole")));
    }
}
