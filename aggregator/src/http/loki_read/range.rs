//! Log queries (`query_range`, and `query` with a selector) run on the search engine: the
//! selector resolves to the (host, file) pairs it admits, the first `|=` or `|~` becomes the
//! search's pattern (a literal's bytes also skip compressed blocks through their filters),
//! the other filters are checked on each line it matches, `start`/`end` are the per-line
//! time window, and `direction` is `order=newest` or `order=oldest` with the limit — so the
//! search's bounds (time limit, `search.max_searches`, kept results) hold here too.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt;
use regex::bytes::RegexBuilder;

use super::logql::{Filter, Matcher};
use super::streams::{labels_of, resolve};
use super::ApiError;
use crate::http::search::{self, LineFilter, NameFilter, Query};
use crate::App;

/// Results a query may collect before answering; past it the answer holds what came first.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// What a log query asks for.
pub struct Ask<'a> {
    pub selector: &'a [Matcher],
    pub filters: &'a [Filter],
    /// Nanoseconds since the epoch, inclusive.
    pub start_ns: u64,
    pub end_ns: u64,
    pub limit: u64,
    pub backward: bool,
}

/// A compiled line filter.
fn compile(f: &Filter) -> Result<regex::bytes::Regex, ApiError> {
    let pattern = if f.regex {
        f.text.clone()
    } else {
        regex::escape(&f.text)
    };
    RegexBuilder::new(&pattern)
        .multi_line(true)
        .size_limit(1 << 20)
        .dfa_size_limit(8 << 20)
        .build()
        .map_err(|e| ApiError::bad_request(format!("line filter {:?}: {e}", f.text)))
}

/// One line a log query found.
pub struct Found {
    pub host: String,
    pub file: String,
    pub generation: String,
    pub line: u64,
    /// Its time, ns since the epoch (0 for a line stored before lines had times).
    pub ns: u128,
    pub content: String,
}

/// What a log query found, in its direction's order, and the lines and bytes it scanned.
pub struct Findings {
    pub found: Vec<Found>,
    pub lines: u64,
    pub bytes: u64,
}

/// Runs a log query; the Loki `data` object of its answer (`resultType` `streams`).
pub async fn run(app: &App, ask: Ask<'_>) -> Result<serde_json::Value, ApiError> {
    let f = find(app, ask).await?;
    let large = f.found.len() > 10_000;
    Ok(crate::busy::offload_if(large, || {
        streams_answer(streams_of(f.found), f.lines, f.bytes)
    }))
}

/// Runs a log query; what it found.
pub async fn find(app: &App, ask: Ask<'_>) -> Result<Findings, ApiError> {
    let settings = app.settings();
    if ask.limit > settings.search_max_limit {
        return Err(ApiError::bad_request(format!(
            "limit {} is over search.max_limit ({})",
            ask.limit, settings.search_max_limit
        )));
    }
    let resolved = resolve(app, ask.selector).await?;
    if resolved.pairs.is_empty() {
        return Ok(Findings {
            found: Vec::new(),
            lines: 0,
            bytes: 0,
        });
    }
    // The first positive filter is the search's pattern; the rest check each match.
    let lead = ask.filters.iter().position(|f| !f.negate);
    let (matcher, literal, must_contain, look_free) = match lead.map(|i| &ask.filters[i]) {
        Some(f) => (
            compile(f)?,
            !f.regex,
            (!f.regex).then(|| f.text.as_bytes().to_vec()),
            !f.regex || search::look_free(&f.text, false),
        ),
        None => (
            RegexBuilder::new("")
                .build()
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
            true,
            None,
            true,
        ),
    };
    let also = ask
        .filters
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != lead)
        .map(|(_, f)| {
            Ok(LineFilter {
                regex: compile(f)?,
                negate: f.negate,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let order = if ask.backward {
        search::Order::Newest
    } else {
        search::Order::Oldest
    };
    let query = Query {
        matcher,
        look_free,
        literal,
        must_contain,
        host: NameFilter::Set(resolved.hosts),
        file: NameFilter::Any,
        pairs: Some(resolved.pairs),
        also,
        generation: None,
        window: Some((ask.start_ns / 1_000_000, ask.end_ns / 1_000_000)),
        limit: u64::MAX,
        keep: ask.limit,
        ranked: Some(search::Ranked::new(order, ask.limit)),
        context: 0,
        events: None,
        text: false,
        deadline: settings.search_timeout,
    };
    let permit = search::permit(app)?;
    let mut body = search::start(app, query, permit);
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                hyper::StatusCode::SERVICE_UNAVAILABLE,
                format!("the search failed: {e}"),
            )
            .retry_after(2)
        })?;
        if let Some(data) = frame.data_ref() {
            out.extend_from_slice(data);
        }
        if out.len() > MAX_ANSWER_BYTES {
            break;
        }
    }
    // Drop the rest: the scan stops at its next chunk.
    drop(body);
    Ok(crate::busy::offload_if(
        out.len() > crate::busy::INLINE_BYTES,
        || parse_results(&out),
    ))
}

/// The search's NDJSON results, in the order it gave them.
fn parse_results(out: &[u8]) -> Findings {
    let mut f = Findings {
        found: Vec::new(),
        lines: 0,
        bytes: 0,
    };
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(s) = v.get("summary") {
            f.lines = s["lines_scanned"].as_u64().unwrap_or(0);
            f.bytes = s["bytes_scanned"].as_u64().unwrap_or(0);
            continue;
        }
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let ns = v["ts"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let content = match v.get("content").and_then(|c| c.as_str()) {
            Some(c) => c.to_owned(),
            // Loki's answer is JSON text: bytes that are not UTF-8 are shown replaced.
            None => v["content_base64"]
                .as_str()
                .and_then(|b| {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.decode(b).ok()
                })
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
        };
        f.found.push(Found {
            host: text("host"),
            file: text("file"),
            generation: text("generation"),
            line: v["line"].as_u64().unwrap_or(0),
            ns,
            content,
        });
    }
    f
}

/// Found lines as Loki's streams, each stream's values in the order found.
pub fn streams_of(found: Vec<Found>) -> Vec<serde_json::Value> {
    let mut streams: BTreeMap<(String, String), Vec<serde_json::Value>> = BTreeMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    for f in found {
        let key = (f.host, f.file);
        let entry = streams.entry(key.clone()).or_default();
        if entry.is_empty() {
            order.push(key);
        }
        entry.push(serde_json::json!([f.ns.to_string(), f.content]));
    }
    order
        .into_iter()
        .map(|key| {
            let values = streams.remove(&key).unwrap_or_default();
            serde_json::json!({"stream": labels_of(&key.0, &key.1), "values": values})
        })
        .collect()
}

fn streams_answer(result: Vec<serde_json::Value>, lines: u64, bytes: u64) -> serde_json::Value {
    serde_json::json!({
        "resultType": "streams",
        "result": result,
        "stats": {"summary": {"totalLinesProcessed": lines, "totalBytesProcessed": bytes}},
    })
}

/// A Loki time parameter: nanoseconds (16 digits or more) or seconds since the epoch, a
/// float of seconds, or RFC 3339; in nanoseconds.
pub fn time_ns(name: &str, v: &str) -> Result<u64, ApiError> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let n: u128 = v.parse().unwrap_or(u128::MAX);
        let ns = if v.len() >= 16 { n } else { n * 1_000_000_000 };
        return Ok(u64::try_from(ns).unwrap_or(u64::MAX));
    }
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok((secs * 1e9) as u64);
        }
    }
    humantime::parse_rfc3339_weak(v)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .ok_or_else(|| {
            let shown: String = v.chars().take(40).collect();
            ApiError::bad_request(format!(
                "parameter `{name}` must be nanoseconds or seconds since the epoch, or RFC 3339, not {shown:?}"
            ))
        })
}

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_come_in_every_form_loki_takes() {
        assert_eq!(
            time_ns("t", "1790000000000000000").expect("ns"),
            1_790_000_000_000_000_000
        );
        assert_eq!(
            time_ns("t", "1790000000").expect("s"),
            1_790_000_000_000_000_000
        );
        assert_eq!(
            time_ns("t", "1790000000.5").expect("float"),
            1_790_000_000_500_000_000
        );
        assert_eq!(
            time_ns("t", "2026-09-21T14:13:20Z").expect("rfc3339"),
            1_790_000_000_000_000_000
        );
        assert!(time_ns("t", "soon").is_err());
    }
}
