//! The batch wire format, defined once for both sides: the agent encodes, the aggregator
//! decodes.
//!
//! Two forms reach `POST /store/batch`:
//! - [`compact`]: the project's own binary form — one host/file/generation, a start line and
//!   many lines, lossless for any bytes (invalid UTF-8, `\r`, NUL). The agent always sends it.
//! - [`prototype`]: the Clojure prototype's JSON form, kept so old clients keep working.
//!
//! Both decode into the same [`FileBatch`] list, so the aggregator has one ingest path.

pub mod compact;
pub mod loki;
pub mod multi;
pub mod otlp;
pub mod prototype;
pub mod push;

use std::borrow::Cow;

/// `Content-Type` of the compact form.
pub const COMPACT_CONTENT_TYPE: &str = "application/x-logship-batch";

/// Largest accepted line number. Far above any real file (2^48 lines) yet small enough that
/// `start + count` and bucket arithmetic can never overflow a `u64`.
pub const MAX_LINE_NUMBER: u64 = (1 << 48) - 1;
/// Longest accepted host name, in bytes.
pub const MAX_HOST_BYTES: usize = 255;
/// Longest accepted file name, in bytes (Linux `PATH_MAX`).
pub const MAX_FILE_BYTES: usize = 4096;
/// Longest accepted generation id, in bytes.
pub const MAX_GENERATION_BYTES: usize = 128;
/// Generation used for lines that arrive without one (the prototype's JSON form).
pub const DEFAULT_GENERATION: &str = "0";

/// The lines of one generation of one file, as decoded from either wire form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBatch<'a> {
    pub host: Cow<'a, str>,
    pub file: Cow<'a, str>,
    pub generation: Cow<'a, str>,
    pub lines: Vec<Line<'a>>,
}

/// One line: its 0-based number, its bytes without the `\n`, whether it is a partial
/// last line (no `\n` yet), which is served back without a trailing `\n`, and its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    pub number: u64,
    pub content: Cow<'a, [u8]>,
    pub partial: bool,
    /// When the line was written, as its sender says (ms since the epoch): a Loki or OTLP
    /// entry's own timestamp. `None` (our own wire forms today) is stamped with the time the
    /// aggregator received it.
    pub ts: Option<u64>,
}

/// Why a body could not be decoded. Each message names what was wrong, for the 400 answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The JSON body did not parse or had the wrong shape.
    #[error("malformed JSON batch: {0}")]
    Json(String),
    /// The compact body ended before the structure it announced.
    #[error("truncated compact batch: {0}")]
    Truncated(&'static str),
    /// The compact body does not start with the magic bytes.
    #[error("not a compact batch: bad magic bytes")]
    BadMagic,
    /// A field is present but not acceptable.
    #[error("invalid field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// Bytes follow the announced lines.
    #[error("{0} unexpected trailing bytes after the last line")]
    Trailing(usize),
    /// The body is well-formed but asks for more than one request may (too many lines,
    /// files or hosts, or a line over the size limit): split it (HTTP 413).
    #[error("{0}")]
    TooLarge(String),
}

/// What one request may decode to, checked while decoding, so that a small body cannot make
/// the decoder (or the store behind it) do much work or allocate much memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Lines in one request.
    pub max_lines: usize,
    /// Bytes of one line's content.
    pub max_line_bytes: usize,
    /// Distinct (host, file, generation) groups in one request.
    pub max_files: usize,
    /// Distinct hosts in one request.
    pub max_hosts: usize,
}

impl Limits {
    /// No limits beyond the body's own size (tools and tests).
    pub const NONE: Limits = Limits {
        max_lines: usize::MAX,
        max_line_bytes: usize::MAX,
        max_files: usize::MAX,
        max_hosts: usize::MAX,
    };

    fn too_many_lines(&self) -> DecodeError {
        DecodeError::TooLarge(format!(
            "more than {} lines in one request; send smaller batches",
            self.max_lines
        ))
    }

    fn check_line(&self, number: u64, len: usize) -> Result<(), DecodeError> {
        if len > self.max_line_bytes {
            return Err(DecodeError::TooLarge(format!(
                "line {number} is {len} bytes, over max_line_bytes ({} bytes)",
                self.max_line_bytes
            )));
        }
        Ok(())
    }
}

impl DecodeError {
    fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        DecodeError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// Checks the names every batch carries; shared by both forms so they reject the same input.
pub fn validate_names(host: &str, file: &str, generation: &str) -> Result<(), DecodeError> {
    check_name("host", host, MAX_HOST_BYTES)?;
    check_name("file", file, MAX_FILE_BYTES)?;
    check_name("generation", generation, MAX_GENERATION_BYTES)
}

fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), DecodeError> {
    if value.is_empty() {
        return Err(DecodeError::invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(DecodeError::invalid(
            field,
            format!("{} bytes, at most {max} allowed", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(DecodeError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Decodes a body in either form: compact when it starts with the magic bytes (or the
/// content type says so), JSON otherwise.
pub fn decode<'a>(
    body: &'a [u8],
    content_type: Option<&str>,
) -> Result<Vec<FileBatch<'a>>, DecodeError> {
    decode_limited(body, content_type, &Limits::NONE)
}

/// [`decode`] within `limits`: over any of them is [`DecodeError::TooLarge`], found before
/// the decoder allocates for it.
pub fn decode_limited<'a>(
    body: &'a [u8],
    content_type: Option<&str>,
    limits: &Limits,
) -> Result<Vec<FileBatch<'a>>, DecodeError> {
    let compact = match content_type.map(|c| c.split(';').next().unwrap_or("").trim()) {
        Some(COMPACT_CONTENT_TYPE) => true,
        Some("application/json") => false,
        _ => body.starts_with(compact::MAGIC),
    };
    if compact && multi::is_multi(body) {
        // Tools and tests take a body whole: any refused section refuses it (the
        // aggregator's ingest answers per section instead).
        multi::decode_limited(body, limits)?
            .sections
            .into_iter()
            .collect()
    } else if compact {
        Ok(vec![compact::decode_limited(body, limits)?])
    } else {
        prototype::decode_limited(body, limits)
    }
}

/// One file batch of the agent's own making, in either compact form (`LSB1`, or `LSB2` of
/// one section): what the agent's sinks, dead letters and tools read.
pub fn decode_file(body: &[u8]) -> Result<FileBatch<'_>, DecodeError> {
    if multi::is_multi(body) {
        multi::decode_one(body)
    } else {
        compact::decode(body)
    }
}

/// The line count of a batch of either compact form, read from its header (for `LSB2`, its
/// first section's); `None` if it is neither.
pub fn line_count_file(body: &[u8]) -> Option<u32> {
    if multi::is_multi(body) {
        multi::line_count(body)
    } else {
        compact::line_count(body)
    }
}

/// Splits a batch of either compact form in two halves (see [`compact::split`]).
pub fn split_file(body: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    if multi::is_multi(body) {
        multi::split(body)
    } else {
        compact::split(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_form_without_content_type() {
        let mut w = compact::Writer::new("h", "/f", "g", 3);
        w.push(b"x", false);
        let body = w.finish();
        let batches = decode(&body, None).expect("compact decodes");
        assert_eq!(batches[0].lines[0].number, 3);
        let json = br#"{"batch":[{"host":"h","file":"/f","line-num":1,"content":"a"}]}"#;
        let batches = decode(json, None).expect("json decodes");
        assert_eq!(batches[0].lines[0].content.as_ref(), b"a");
    }

    #[test]
    fn limits_are_checked_in_both_forms() {
        let limits = Limits {
            max_lines: 3,
            max_line_bytes: 4,
            max_files: 2,
            max_hosts: 1,
        };
        let mut w = compact::Writer::new("h", "/f", "g", 7);
        for l in ["a", "bb", "ccc", "d"] {
            w.push(l.as_bytes(), false);
        }
        let e = decode_limited(&w.finish(), None, &limits).expect_err("4 lines");
        assert!(
            matches!(e, DecodeError::TooLarge(ref m) if m.contains("3 lines")),
            "{e}"
        );
        let mut w = compact::Writer::new("h", "/f", "g", 7);
        w.push(b"12345", false);
        let e = decode_limited(&w.finish(), None, &limits).expect_err("long line");
        assert!(
            matches!(e, DecodeError::TooLarge(ref m) if m.contains("line 7 is 5 bytes")),
            "{e}"
        );
        let line = |h: &str, f: &str, n: u64, c: &str| {
            format!(r#"{{"host":"{h}","file":"{f}","line-num":{n},"content":"{c}"}}"#)
        };
        let json = |entries: &[String]| format!(r#"{{"batch":[{}]}}"#, entries.join(","));
        let ok = json(&[
            line("h", "/a", 1, "x"),
            line("h", "/b", 2, "y"),
            line("h", "/a", 3, "z"),
        ]);
        let b = decode_limited(ok.as_bytes(), None, &limits).expect("within limits");
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].lines.len(), 2);
        for (body, needle) in [
            (
                json(&[
                    line("h", "/a", 1, "x"),
                    line("h", "/b", 2, "y"),
                    line("h", "/c", 3, "z"),
                ]),
                "files",
            ),
            (
                json(&[line("h", "/a", 1, "x"), line("i", "/a", 2, "y")]),
                "hosts",
            ),
            (json(&vec![line("h", "/a", 1, "x"); 4]), "lines"),
            (json(&[line("h", "/a", 9, "xxxxx")]), "line 9 is 5 bytes"),
        ] {
            let e = decode_limited(body.as_bytes(), None, &limits).expect_err(needle);
            assert!(
                matches!(e, DecodeError::TooLarge(ref m) if m.contains(needle)),
                "{e}"
            );
        }
    }

    #[test]
    fn json_content_borrows_from_the_body_unless_escaped() {
        let body = br#"{"batch":[{"host":"h","file":"/f","line-num":1,"content":"plain"},{"host":"h","file":"/f","line-num":2,"content":"tab\there"}]}"#;
        let b = decode(body, None).expect("decodes");
        assert!(matches!(b[0].lines[0].content, Cow::Borrowed(_)));
        assert_eq!(b[0].lines[1].content.as_ref(), b"tab\there");
    }

    #[test]
    fn rejects_bad_names() {
        assert!(validate_names("", "/f", "g").is_err());
        assert!(validate_names("h", "/f\n", "g").is_err());
        assert!(validate_names("h", &"x".repeat(5000), "g").is_err());
        assert!(validate_names("h", "/f", "g").is_ok());
    }
}
