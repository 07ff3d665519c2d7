//! The Clojure prototype's JSON form:
//! `{"size":2,"batch":[{"uuid":"…","host":"h","file":"/p","line-num":6,"content":"106"}]}`.
//!
//! Content is a JSON string, so this form cannot carry invalid UTF-8; the compact form can.
//! An optional `generation` per entry is accepted; without it lines go to
//! [`DEFAULT_GENERATION`](crate::DEFAULT_GENERATION).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::{
    validate_names, DecodeError, FileBatch, Limits, Line, DEFAULT_GENERATION, MAX_LINE_NUMBER,
};

/// One entry. Strings borrow from the body unless they hold escapes, so a line costs its
/// `Line` (about 40 bytes) rather than a parsed entry with four owned strings (~290 bytes).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry<'a> {
    #[serde(default)]
    #[allow(dead_code)]
    uuid: Option<IgnoredAny>,
    #[serde(borrow)]
    host: Cow<'a, str>,
    #[serde(borrow)]
    file: Cow<'a, str>,
    #[serde(rename = "line-num")]
    line_num: u64,
    #[serde(borrow)]
    content: Cow<'a, str>,
    #[serde(default, borrow)]
    generation: Option<Cow<'a, str>>,
}

/// Decodes the JSON form, grouping entries by host/file/generation (first appearance order).
pub fn decode(body: &[u8]) -> Result<Vec<FileBatch<'_>>, DecodeError> {
    decode_limited(body, &Limits::NONE)
}

/// [`decode`] within `limits`, checked entry by entry while parsing: the body is never
/// materialised as a list of entries first.
pub fn decode_limited<'a>(
    body: &'a [u8],
    limits: &Limits,
) -> Result<Vec<FileBatch<'a>>, DecodeError> {
    let refused = RefCell::new(None);
    let de = &mut serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let result = BodySeed {
        limits,
        refused: &refused,
    }
    .deserialize(serde_path_to_error::Deserializer::new(de, &mut track));
    if let Some(e) = refused.into_inner() {
        return Err(e);
    }
    let (size, grouped) = result.map_err(|e| {
        let path = track.path().to_string();
        DecodeError::Json(format!("at `{path}`: {e}"))
    })?;
    if let Some(size) = size {
        if size != grouped.entries {
            return Err(DecodeError::Invalid {
                field: "size",
                reason: format!(
                    "says {size} but the batch holds {} entries",
                    grouped.entries
                ),
            });
        }
    }
    Ok(grouped.batches)
}

/// (host, file, generation).
type GroupKey<'a> = (Cow<'a, str>, Cow<'a, str>, Cow<'a, str>);

/// Entries grouped as they are parsed.
#[derive(Default)]
struct Grouped<'a> {
    batches: Vec<FileBatch<'a>>,
    index: HashMap<GroupKey<'a>, usize>,
    hosts: HashSet<Cow<'a, str>>,
    entries: u64,
}

/// The whole body; carries the limits into the entries and keeps a limit refusal apart
/// from JSON errors (it becomes a 413, not a 400).
struct BodySeed<'l> {
    limits: &'l Limits,
    refused: &'l RefCell<Option<DecodeError>>,
}

impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
    type Value = (Option<u64>, Grouped<'de>);

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BodySeed<'_> {
    type Value = (Option<u64>, Grouped<'de>);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"an object {"size": N, "batch": [...]}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut size, mut batch) = (None, None);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "size" if size.is_none() => size = Some(map.next_value::<Option<u64>>()?),
                "batch" if batch.is_none() => {
                    batch = Some(map.next_value_seed(BatchSeed {
                        limits: self.limits,
                        refused: self.refused,
                    })?)
                }
                "size" | "batch" => return Err(de::Error::duplicate_field("batch or size")),
                other => return Err(de::Error::unknown_field(other, &["size", "batch"])),
            }
        }
        let batch = batch.ok_or_else(|| de::Error::missing_field("batch"))?;
        Ok((size.flatten(), batch))
    }
}

struct BatchSeed<'l> {
    limits: &'l Limits,
    refused: &'l RefCell<Option<DecodeError>>,
}

impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = Grouped<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_> {
    type Value = Grouped<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut g = Grouped::default();
        let refuse = |e: DecodeError| -> A::Error {
            let msg = e.to_string();
            *self.refused.borrow_mut() = Some(e);
            de::Error::custom(msg)
        };
        while let Some(e) = seq.next_element::<Entry<'de>>()? {
            g.entries += 1;
            if g.entries > self.limits.max_lines as u64 {
                return Err(refuse(self.limits.too_many_lines()));
            }
            let generation = e.generation.unwrap_or(Cow::Borrowed(DEFAULT_GENERATION));
            validate_names(&e.host, &e.file, &generation).map_err(&refuse)?;
            if e.line_num > MAX_LINE_NUMBER {
                return Err(refuse(DecodeError::Invalid {
                    field: "line-num",
                    reason: format!(
                        "{} is above the largest line number {MAX_LINE_NUMBER}",
                        e.line_num
                    ),
                }));
            }
            self.limits
                .check_line(e.line_num, e.content.len())
                .map_err(&refuse)?;
            let line = Line {
                number: e.line_num,
                content: match e.content {
                    Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
                    Cow::Owned(s) => Cow::Owned(s.into_bytes()),
                },
                partial: false,
                ts: None,
            };
            let key = (e.host, e.file, generation);
            if let Some(&i) = g.index.get(&key) {
                g.batches[i].lines.push(line);
                continue;
            }
            if g.batches.len() >= self.limits.max_files {
                return Err(refuse(DecodeError::TooLarge(format!(
                    "more than {} files in one request; send one file per request",
                    self.limits.max_files
                ))));
            }
            if !g.hosts.contains(&key.0) {
                if g.hosts.len() >= self.limits.max_hosts {
                    return Err(refuse(DecodeError::TooLarge(format!(
                        "more than {} hosts in one request; send one host per request",
                        self.limits.max_hosts
                    ))));
                }
                g.hosts.insert(key.0.clone());
            }
            g.index.insert(key.clone(), g.batches.len());
            let (host, file, generation) = key;
            g.batches.push(FileBatch {
                host,
                file,
                generation,
                lines: vec![line],
            });
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_prototype_example() {
        let body = br#"{"size":2,"batch":[
            {"uuid":"a","host":"h","file":"/p","line-num":6,"content":"106"},
            {"uuid":"b","host":"h","file":"/p","line-num":5,"content":"105"}]}"#;
        let b = decode(body).expect("decodes");
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].generation, DEFAULT_GENERATION);
        let nums: Vec<u64> = b[0].lines.iter().map(|l| l.number).collect();
        assert_eq!(nums, vec![6, 5]);
    }

    #[test]
    fn rejects_wrong_shapes_with_a_reason() {
        for (body, needle) in [
            (
                &br#"{"batch":[{"host":"h","file":"/p","line-num":-1,"content":"x"}]}"#[..],
                "line-num",
            ),
            (
                br#"{"batch":[{"host":"h","file":"/p","content":"x"}]}"#,
                "line-num",
            ),
            (
                br#"{"batch":[{"host":5,"file":"/p","line-num":1,"content":"x"}]}"#,
                "invalid type",
            ),
            (br#"{"size":3,"batch":[]}"#, "size"),
            (
                br#"{"batch":[{"host":"h","file":"/p","line-num":1e300,"content":"x"}]}"#,
                "line-num",
            ),
            (
                br#"{"batch":[{"host":"h","file":"/p","line-num":1,"content":"x"}"#,
                "EOF",
            ),
            (
                br#"{"batch":[{"host":"h","file":"/p","line-num":1,"content":"x","colour":1}]}"#,
                "colour",
            ),
        ] {
            let err = decode(body).expect_err("must fail").to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }
}
