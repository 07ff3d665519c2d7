//! The Clojure prototype's JSON form:
//! `{"size":2,"batch":[{"uuid":"…","host":"h","file":"/p","line-num":6,"content":"106"}]}`.
//!
//! Content is a JSON string, so this form cannot carry invalid UTF-8; the compact form can.
//! An optional `generation` per entry is accepted; without it lines go to
//! [`DEFAULT_GENERATION`](crate::DEFAULT_GENERATION).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{validate_names, DecodeError, FileBatch, Line, DEFAULT_GENERATION, MAX_LINE_NUMBER};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    size: Option<u64>,
    batch: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default)]
    #[allow(dead_code)]
    uuid: Option<String>,
    host: String,
    file: String,
    #[serde(rename = "line-num")]
    line_num: u64,
    content: String,
    generation: Option<String>,
}

/// Decodes the JSON form, grouping entries by host/file/generation (first appearance order).
pub fn decode(body: &[u8]) -> Result<Vec<FileBatch<'static>>, DecodeError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let parsed: Body = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        DecodeError::Json(format!("at `{path}`: {}", e.into_inner()))
    })?;
    if let Some(size) = parsed.size {
        if size != parsed.batch.len() as u64 {
            return Err(DecodeError::Invalid {
                field: "size",
                reason: format!(
                    "says {size} but the batch holds {} entries",
                    parsed.batch.len()
                ),
            });
        }
    }
    let mut order: Vec<(String, String, String)> = Vec::new();
    let mut groups: BTreeMap<(String, String, String), Vec<Line<'static>>> = BTreeMap::new();
    for e in parsed.batch {
        let generation = e
            .generation
            .unwrap_or_else(|| DEFAULT_GENERATION.to_owned());
        validate_names(&e.host, &e.file, &generation)?;
        if e.line_num > MAX_LINE_NUMBER {
            return Err(DecodeError::Invalid {
                field: "line-num",
                reason: format!(
                    "{} is above the largest line number {MAX_LINE_NUMBER}",
                    e.line_num
                ),
            });
        }
        let key = (e.host, e.file, generation);
        let line = Line {
            number: e.line_num,
            content: Cow::Owned(e.content.into_bytes()),
            partial: false,
        };
        match groups.get_mut(&key) {
            Some(lines) => lines.push(line),
            None => {
                order.push(key.clone());
                groups.insert(key, vec![line]);
            }
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|key| {
            let lines = groups.remove(&key)?;
            let (host, file, generation) = key;
            Some(FileBatch {
                host: Cow::Owned(host),
                file: Cow::Owned(file),
                generation: Cow::Owned(generation),
                lines,
            })
        })
        .collect())
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
