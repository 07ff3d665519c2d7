//! Search requests: the parameters of `GET /store/search`, parsed and validated (the pattern
//! compiled within its limits, times absolute or relative).

use super::*;

/// What to look for and where: a parsed, validated request.
#[derive(Debug)]
pub struct Query {
    pub matcher: Regex,
    /// The pattern has no look-around (`^`, `$`, `\b`): it may run over bytes that are
    /// not separated by `\n`.
    pub look_free: bool,
    /// `q` is a literal (not `regex=true`).
    pub literal: bool,
    /// Bytes every matching line contains: a case-sensitive literal's own, for the store's
    /// block filters to skip blocks without them.
    pub must_contain: Option<Vec<u8>>,
    pub host: NameFilter,
    pub file: NameFilter,
    /// Only these (host, file) pairs (a LogQL stream selector, resolved); `None` for all.
    pub pairs: Option<std::collections::HashSet<(String, String)>>,
    /// More line filters every match must pass (LogQL's chained `|=`, `!=`, `|~`, `!~`).
    pub also: Vec<LineFilter>,
    pub generation: Option<String>,
    /// (since, until) in ms since the epoch, by receive time.
    pub window: Option<(u64, u64)>,
    /// Matches to scan for before stopping (everything, when ordered by time).
    pub limit: u64,
    /// Matches to answer with (`limit=`).
    pub keep: u64,
    /// `order=newest|oldest`: the best `keep` by time, kept while the scan runs.
    pub ranked: Option<super::order::Ranked>,
    pub context: usize,
    /// `events=true` / `event_start=`: a match comes with its whole event — the lines from
    /// the last line matching this (the event's first) up to the next one, at most
    /// [`MAX_EVENT_LINES`] each way.
    pub events: Option<Regex>,
    pub text: bool,
    pub deadline: Duration,
}

/// A line filter beyond the search's pattern: a line passes when `regex` matches it, or,
/// `negate`d, when it does not.
#[derive(Debug)]
pub struct LineFilter {
    pub regex: Regex,
    pub negate: bool,
}

impl LineFilter {
    pub fn admits(&self, line: &[u8]) -> bool {
        self.regex.is_match(line) != self.negate
    }
}

/// `host=` or `file=`: one exact name, or a glob (`web-*`, `/var/log/nginx/*.log`), or a
/// set of names (a resolved LogQL selector).
#[derive(Debug)]
pub enum NameFilter {
    Any,
    Exact(String),
    Glob(globset::GlobMatcher),
    Set(std::collections::BTreeSet<String>),
}

impl NameFilter {
    pub(super) fn admits(&self, name: &str) -> bool {
        match self {
            NameFilter::Any => true,
            NameFilter::Exact(f) => f == name,
            NameFilter::Glob(g) => g.is_match(name),
            NameFilter::Set(names) => names.contains(name),
        }
    }

    /// Parameter `param`'s filter: a value with `*`, `?`, `[` or `{` is a glob (`*` stops
    /// at `/`), any other one an exact name.
    fn parse(param: &str, value: Option<&str>) -> Result<Self, ApiError> {
        Ok(match value {
            None | Some("") => NameFilter::Any,
            Some(v) if v.contains(['*', '?', '[', '{']) => NameFilter::Glob(
                globset::GlobBuilder::new(v)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| {
                        ApiError::bad_request(format!(
                            "parameter `{param}` is not a usable glob: {}",
                            e.kind()
                        ))
                    })?
                    .compile_matcher(),
            ),
            Some(v) => NameFilter::Exact(v.to_owned()),
        })
    }
}

/// The lines that begin an event when `events=true` names no rule: a line starting with a
/// date (`2026-12-08`), a time (`10:00:01`), a syslog stamp (`Dec  8 10:00:01`) or a bracketed
/// one (`[2026-…`, `[10:…`). The lines between (a stack trace's frames, a traceback) belong
/// to the event before them.
pub const DEFAULT_EVENT_START: &str =
    r"^\[?(\d{4}-\d{2}-\d{2}|\d{2}:\d{2}:\d{2}|[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2})";

/// The most lines of an event shown before and after its match.
pub const MAX_EVENT_LINES: usize = 200;

const PARAMS: &[&str] = &[
    "q",
    "regex",
    "case",
    "host",
    "file",
    "generation",
    "since",
    "until",
    "limit",
    "context",
    "events",
    "event_start",
    "format",
    "order",
];

impl Query {
    /// Parses and checks a request's parameters; every mistake is a 400 naming it.
    pub fn parse(
        query: Option<&str>,
        max_limit: u64,
        max_context: u64,
        deadline: Duration,
        now: SystemTime,
    ) -> Result<Query, ApiError> {
        let p = Params::parse(query, PARAMS)?;
        let decoded = p.required("q")?;
        // `q` as the bytes it encodes: a literal may hold bytes that are not UTF-8. (A name
        // written percent-encoded, `%71=`, is only found decoded.)
        let q = raw_param(query.unwrap_or(""), "q").unwrap_or_else(|| decoded.as_bytes().to_vec());
        if q.len() > MAX_PATTERN {
            return Err(ApiError::bad_request(format!(
                "parameter `q` is {} bytes; at most {MAX_PATTERN}",
                q.len()
            )));
        }
        let is_regex = p.flag("regex")?;
        let insensitive = p.one_of("case", &["sensitive", "insensitive"])? == "insensitive";
        let must_contain = (!is_regex && !insensitive).then(|| q.clone());
        let pattern = if is_regex {
            String::from_utf8(q).map_err(|_| {
                ApiError::bad_request(
                    "parameter `q` (a regex) must be UTF-8; write other bytes as (?-u:\\xff)",
                )
            })?
        } else {
            literal(&q)
        };
        let matcher = RegexBuilder::new(&pattern)
            .case_insensitive(insensitive)
            // `^` and `$` at line boundaries, as in grep: the pattern runs over many lines
            // at once.
            .multi_line(true)
            .size_limit(REGEX_SIZE)
            .dfa_size_limit(REGEX_DFA_SIZE)
            .build()
            .map_err(|e| {
                let msg: String = e.to_string().chars().take(600).collect();
                ApiError::bad_request(format!("parameter `q` is not a usable regex: {msg}"))
            })?;
        let look_free = look_free(&pattern, insensitive);
        let file = NameFilter::parse("file", p.optional("file"))?;
        let host = NameFilter::parse("host", p.optional("host"))?;
        let since = p
            .optional("since")
            .map(|v| time("since", v, now))
            .transpose()?;
        let until = p
            .optional("until")
            .map(|v| time("until", v, now))
            .transpose()?;
        let window = match (since, until) {
            (None, None) => None,
            (s, u) => {
                let (s, u) = (s.unwrap_or(0), u.unwrap_or(u64::MAX));
                if s > u {
                    return Err(ApiError::bad_request(
                        "`since` is later than `until`: the window is empty",
                    ));
                }
                Some((s, u))
            }
        };
        let limit = p.number("limit")?.unwrap_or(1_000.min(max_limit));
        if limit == 0 {
            return Err(ApiError::bad_request(
                "parameter `limit` must be at least 1",
            ));
        }
        if limit > max_limit {
            return Err(ApiError::bad_request(format!(
                "parameter `limit` is {limit}; at most {max_limit} (search.max_limit)"
            )));
        }
        let context = p.number("context")?.unwrap_or(0);
        if context > max_context {
            return Err(ApiError::bad_request(format!(
                "parameter `context` is {context}; at most {max_context} (search.max_context)"
            )));
        }
        let events = match (p.flag("events")?, p.optional("event_start")) {
            (_, Some(rule)) => Some(
                regex::bytes::RegexBuilder::new(rule)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| {
                        ApiError::bad_request(format!(
                            "parameter `event_start` is not a regex: {e}"
                        ))
                    })?,
            ),
            (true, None) => Some(
                Regex::new(DEFAULT_EVENT_START)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
            ),
            (false, None) => None,
        };
        if events.is_some() && context > 0 {
            return Err(ApiError::bad_request(
                "parameters `events` and `context` do not go together: an event is its own context",
            ));
        }
        let text = p.one_of("format", &["ndjson", "text"])? == "text";
        let order = match p.one_of("order", &["storage", "newest", "oldest"])? {
            "newest" => super::order::Order::Newest,
            "oldest" => super::order::Order::Oldest,
            _ => super::order::Order::Storage,
        };
        let ranked = (order != super::order::Order::Storage)
            .then(|| super::order::Ranked::new(order, limit));
        if ranked.is_some() && (context > 0 || events.is_some()) {
            return Err(ApiError::bad_request(
                "parameters `context` and `events` are not available with `order=newest` or `order=oldest` (results are sorted, not streamed): use order=storage",
            ));
        }
        Ok(Query {
            matcher,
            look_free,
            literal: !is_regex,
            must_contain,
            host,
            file,
            pairs: None,
            also: Vec::new(),
            generation: p
                .optional("generation")
                .filter(|g| !g.is_empty())
                .map(str::to_owned),
            window,
            limit: if ranked.is_some() { u64::MAX } else { limit },
            keep: limit,
            ranked,
            context: context as usize,
            events,
            text,
            deadline,
        })
    }
}

/// Whether `pattern` has no look-around (`^`, `$`, `\b`), so it may run over many lines at
/// once.
pub fn look_free(pattern: &str, insensitive: bool) -> bool {
    regex_syntax::ParserBuilder::new()
        .utf8(false)
        .case_insensitive(insensitive)
        .multi_line(true)
        .build()
        .parse(pattern)
        .is_ok_and(|hir| hir.properties().look_set().is_empty())
}

/// A regex matching exactly the bytes of `q`: UTF-8 runs escaped (so case-insensitive
/// matching still works on them), other bytes as raw byte escapes.
fn literal(q: &[u8]) -> String {
    let mut out = String::new();
    for chunk in q.utf8_chunks() {
        out.push_str(&regex::escape(chunk.valid()));
        for b in chunk.invalid() {
            out.push_str(&format!("(?-u:\\x{b:02x})"));
        }
    }
    out
}

/// The percent-decoded bytes of parameter `name` in a query string (`+` is a space).
fn raw_param(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            let v = v.replace('+', " ");
            percent_encoding::percent_decode_str(&v).collect()
        })
    })
}

/// An RFC 3339 time (`2026-11-29T10:00:00Z`) or one relative to now (`15m`, `2h`, `7d`),
/// in ms since the epoch.
fn time(name: &str, v: &str, now: SystemTime) -> Result<u64, ApiError> {
    let bad = || {
        let shown: String = v.chars().take(40).collect();
        ApiError::bad_request(format!(
            "parameter `{name}` must be an RFC 3339 time such as 2026-11-29T10:00:00Z or a \
             duration before now such as 15m, not {shown:?}"
        ))
    };
    let at = match humantime::parse_rfc3339_weak(v.trim()) {
        Ok(t) => t,
        Err(_) => {
            let d = humantime::parse_duration(v.trim()).map_err(|_| bad())?;
            now.checked_sub(d).unwrap_or(UNIX_EPOCH)
        }
    };
    Ok(at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<Query, String> {
        Query::parse(
            Some(q),
            100,
            5,
            Duration::from_secs(1),
            UNIX_EPOCH + Duration::from_secs(1_000_000),
        )
        .map_err(|e| e.message)
    }

    #[test]
    fn bad_queries_name_what_is_wrong() {
        for (q, want) in [
            ("", "missing parameter `q`"),
            ("q=", "must not be empty"),
            ("q=a&limit=0", "at least 1"),
            ("q=a&limit=101", "at most 100"),
            ("q=a&context=6", "at most 5"),
            ("q=(&regex=true", "not a usable regex"),
            ("q=a&since=yesterday", "`since`"),
            ("q=a&since=1m&until=2m", "window is empty"),
            ("q=a&colour=red", "unknown parameter `colour`"),
            ("q=a&case=upper", "`case`"),
            ("q=a&format=xml", "`format`"),
            ("q=a&file=%5B", "glob"),
        ] {
            let e = parse(q).expect_err(q);
            assert!(e.contains(want), "{q}: {e}");
        }
        let e = parse(&format!("q={}&regex=true", "a{1000}{1000}")).expect_err("huge");
        assert!(e.contains("not a usable regex"), "{e}");
    }

    #[test]
    fn literals_are_literal_and_times_are_absolute_or_relative() {
        let q = parse("q=a.b%5B&since=10s&until=2026-11-29T00:00:00Z").expect("valid");
        assert!(q.matcher.is_match(b"xa.b[y"));
        assert!(!q.matcher.is_match(b"axb["));
        let (since, until) = q.window.expect("window");
        assert_eq!(since, (1_000_000 - 10) * 1000);
        assert_eq!(until, 1_795_910_400_000);
        let q = parse("q=ERROR&case=insensitive").expect("valid");
        assert!(q.matcher.is_match(b"an error here"));
        let q = parse("q=%28%3F-u%3A%5Cxff%29&regex=true").expect("bytes");
        assert!(q.matcher.is_match(b"\xff"));
        let q = parse("q=a%FFb").expect("a literal with a byte that is not UTF-8");
        assert!(q.matcher.is_match(b"xa\xffby") && !q.matcher.is_match(b"ab"));
        let q = parse("q=%5EERROR&regex=true").expect("anchored");
        assert!(q.matcher.is_match(b"x\nERROR at line start"));
        assert!(parse("q=%FF&regex=true").is_err());
        let q = parse("%71=abc").expect("an encoded name");
        assert!(q.matcher.is_match(b"xabc") && !q.matcher.is_match(b"xyz"));
    }
}
