//! What the push protocols of other shippers (Loki's, in `loki.rs`; OTLP, in `otlp.rs`)
//! decode to: streams named by their labels, each a list of lines with the sender's time.
//! They carry no line numbers; the aggregator numbers them per stream.
//!
//! Decoding is bounded before it allocates: a protobuf body's messages are counted by
//! [`count_messages`] without decoding (an empty repeated message costs 2 bytes on the wire
//! and ~100 in memory), a JSON body's objects and arrays by [`json_structures`].

use bytes::Bytes;

use crate::DecodeError;

/// One stream of a push: its labels (sorted by name, names unique) and its entries in the
/// order they were sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stream {
    pub labels: Vec<(String, String)>,
    pub entries: Vec<Entry>,
}

/// One line of a stream and its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Nanoseconds since the epoch, as sent (0 when the sender gave none).
    pub ts_ns: u64,
    pub line: Bytes,
}

/// Longest label name accepted (Loki's default `max_label_name_length`).
pub const MAX_LABEL_NAME_BYTES: usize = 1024;
/// Longest label value accepted (Loki's default `max_label_value_length`).
pub const MAX_LABEL_VALUE_BYTES: usize = 2048;
/// Most labels on one stream (Loki's default is 15; ours is looser, a file name holds them).
pub const MAX_LABELS: usize = 32;

/// Checks a stream's labels against the limits above and sorts them; a name given twice is
/// an error (which value would count is ambiguous).
pub fn check_labels(labels: &mut [(String, String)]) -> Result<(), DecodeError> {
    if labels.len() > MAX_LABELS {
        return Err(DecodeError::invalid(
            "labels",
            format!(
                "{} labels on one stream, at most {MAX_LABELS}",
                labels.len()
            ),
        ));
    }
    for (name, value) in labels.iter() {
        if name.is_empty() || name.len() > MAX_LABEL_NAME_BYTES {
            return Err(DecodeError::invalid(
                "labels",
                format!(
                    "label name of {} bytes; 1 to {MAX_LABEL_NAME_BYTES} allowed",
                    name.len()
                ),
            ));
        }
        if value.len() > MAX_LABEL_VALUE_BYTES {
            let shown: String = name.chars().take(64).collect();
            return Err(DecodeError::invalid(
                "labels",
                format!(
                    "label {shown:?} has a value of {} bytes, at most {MAX_LABEL_VALUE_BYTES}",
                    value.len()
                ),
            ));
        }
    }
    labels.sort();
    if let Some(w) = labels.windows(2).find(|w| w[0].0 == w[1].0) {
        let shown: String = w[0].0.chars().take(64).collect();
        return Err(DecodeError::invalid(
            "labels",
            format!("label {shown:?} given twice"),
        ));
    }
    Ok(())
}

/// Parses a Prometheus-style label set, `{name="value", other="v\"x"}`, as Loki's protobuf
/// push carries it.
pub fn parse_labels(text: &str) -> Result<Vec<(String, String)>, DecodeError> {
    let bad = |why: &str| {
        let shown: String = text.chars().take(80).collect();
        DecodeError::invalid("labels", format!("{why} in label set {shown:?}"))
    };
    let mut chars = text.trim().chars().peekable();
    if chars.next() != Some('{') {
        return Err(bad("no opening '{'"));
    }
    let mut out = Vec::new();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.peek() {
            Some('}') => {
                chars.next();
                break;
            }
            None => return Err(bad("no closing '}'")),
            _ => {}
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if name.is_empty() {
            return Err(bad("a label without a name"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return Err(bad("expected =\"value\" after a label name"));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                None => return Err(bad("an unterminated value")),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some('t') => value.push('\t'),
                    Some('r') => value.push('\r'),
                    Some(c) => value.push(c),
                    None => return Err(bad("an unterminated value")),
                },
                Some(c) => value.push(c),
            }
        }
        out.push((name, value));
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            Some(',') => {}
            Some('}') => break,
            _ => return Err(bad("expected ',' or '}' after a value")),
        }
    }
    if chars.next().is_some() {
        return Err(bad("text after the closing '}'"));
    }
    Ok(out)
}

/// Renders labels as `{a="x", b="y"}` (values escaped as [`parse_labels`] reads them).
pub fn render_labels(labels: &[(String, String)]) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// An upper bound on the objects and arrays a JSON body holds (every `{` and `[` byte,
/// those inside strings too): what its decoding may allocate structures for.
pub fn json_structures(body: &[u8]) -> usize {
    body.iter().filter(|&&b| b == b'{' || b == b'[').count()
}

/// A protobuf schema as the walker needs it: which fields of a message kind hold messages,
/// and of which kind.
pub type Schema = fn(kind: u8, field: u32) -> Option<u8>;

/// Deepest nesting walked (OTLP's `AnyValue` nests itself); deeper is an error, as in prost.
const MAX_DEPTH: usize = 32;

/// Counts the messages of each kind (index = kind) in a protobuf `body` of kind 0, without
/// decoding or allocating per message; stops with [`DecodeError::TooLarge`] once the total
/// passes `max_total`. Malformed framing is an error here already.
pub fn count_messages(
    body: &[u8],
    schema: Schema,
    kinds: usize,
    max_total: usize,
) -> Result<Vec<usize>, DecodeError> {
    let mut counts = vec![0usize; kinds];
    let mut total = 0usize;
    walk(body, 0, schema, &mut counts, &mut total, max_total, 0)?;
    Ok(counts)
}

fn walk(
    mut buf: &[u8],
    kind: u8,
    schema: Schema,
    counts: &mut [usize],
    total: &mut usize,
    max_total: usize,
    depth: usize,
) -> Result<(), DecodeError> {
    let malformed = |why: &str| DecodeError::invalid("protobuf", why.to_string());
    if depth > MAX_DEPTH {
        return Err(malformed("messages nested too deep"));
    }
    while !buf.is_empty() {
        let key = varint(&mut buf).ok_or_else(|| malformed("a field key is cut off"))?;
        let field = u32::try_from(key >> 3).map_err(|_| malformed("a field number too large"))?;
        match key & 7 {
            0 => {
                varint(&mut buf).ok_or_else(|| malformed("a varint is cut off"))?;
            }
            1 => {
                buf = buf
                    .get(8..)
                    .ok_or_else(|| malformed("a fixed64 is cut off"))?
            }
            5 => {
                buf = buf
                    .get(4..)
                    .ok_or_else(|| malformed("a fixed32 is cut off"))?
            }
            2 => {
                let len = varint(&mut buf).ok_or_else(|| malformed("a length is cut off"))?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= buf.len())
                    .ok_or_else(|| malformed("a length prefix runs past the end of the body"))?;
                let (inner, rest) = buf.split_at(len);
                buf = rest;
                if let Some(child) = schema(kind, field) {
                    if let Some(c) = counts.get_mut(usize::from(child)) {
                        *c += 1;
                    }
                    *total += 1;
                    if *total > max_total {
                        return Err(DecodeError::TooLarge(format!(
                            "more than {max_total} protobuf messages in one request; send \
                             smaller batches"
                        )));
                    }
                    walk(inner, child, schema, counts, total, max_total, depth + 1)?;
                }
            }
            _ => return Err(malformed("an unknown wire type (groups are not supported)")),
        }
    }
    Ok(())
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_parse_and_render_back() {
        let l = parse_labels(r#"{job="nginx", host="web-1",  path="a\"b\\c"}"#).expect("parse");
        assert_eq!(
            l,
            [
                ("job".into(), "nginx".into()),
                ("host".into(), "web-1".into()),
                ("path".into(), "a\"b\\c".into())
            ]
        );
        assert_eq!(parse_labels(&render_labels(&l)).expect("again"), l);
        assert_eq!(parse_labels("{}").expect("empty"), []);
        for bad in [
            "",
            "job=\"x\"",
            "{job}",
            "{job=\"x\"",
            "{=\"x\"}",
            "{a=\"x\"} tail",
        ] {
            assert!(parse_labels(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels_over_their_limits_are_refused_and_the_rest_sorted() {
        let mut ok = vec![("b".to_string(), "2".to_string()), ("a".into(), "1".into())];
        check_labels(&mut ok).expect("fine");
        assert_eq!(ok[0].0, "a");
        let mut long = vec![("a".to_string(), "x".repeat(1 << 20))];
        let e = check_labels(&mut long).expect_err("1 MiB value");
        assert!(e.to_string().contains("1048576 bytes"), "{e}");
        let mut twice = vec![("a".to_string(), "1".to_string()), ("a".into(), "2".into())];
        assert!(check_labels(&mut twice).is_err());
    }

    #[test]
    fn the_walker_counts_nested_messages_and_refuses_lying_lengths() {
        // kind 0: field 1 holds kind 1; kind 1: field 2 holds kind 2.
        let schema: Schema = |kind, field| match (kind, field) {
            (0, 1) => Some(1),
            (1, 2) => Some(2),
            _ => None,
        };
        // Two kind-1 messages, the first with three kind-2 children, the second with a
        // string field (3) that is not walked.
        let inner = [0x12, 0, 0x12, 0, 0x12, 0];
        let mut body = vec![0x0a, inner.len() as u8];
        body.extend_from_slice(&inner);
        body.extend_from_slice(&[0x0a, 3, 0x1a, 1, b'x']);
        assert_eq!(
            count_messages(&body, schema, 3, 100).expect("walk"),
            [0, 2, 3]
        );
        let e = count_messages(&body, schema, 3, 4).expect_err("over the cap");
        assert!(matches!(e, DecodeError::TooLarge(_)), "{e}");
        // A 2 GB length prefix on a tiny body.
        let lie = [0x0a, 0x80, 0x80, 0x80, 0x80, 0x08, 1, 2, 3];
        let e = count_messages(&lie, schema, 3, 100).expect_err("lie");
        assert!(e.to_string().contains("past the end"), "{e}");
    }
}
