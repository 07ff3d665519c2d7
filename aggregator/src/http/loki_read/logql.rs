//! The LogQL subset the aggregator answers: a stream selector with `=`, `!=`, `=~`, `!~`
//! matchers, then line filters chained (`|=`, `!=`, `|~`, `!~`), and the metric expression
//! `vector(1)+vector(1)` that Grafana's "Save & test" sends. Anything else is refused with
//! what is supported, never answered wrongly.

use regex::Regex;

/// What a query outside the subset is told.
pub const SUPPORTED: &str =
    "supported: a stream selector such as {host=\"web-1\", filename=~\"/var/log/.*\"} \
(=, !=, =~, !~) followed by line filters (|= \"text\", != \"text\", |~ \"regex\", !~ \"regex\"), \
and vector(n) + vector(m)";

/// How a label matcher compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Re,
    NotRe,
}

/// One `name op "value"` of a selector.
#[derive(Debug)]
pub struct Matcher {
    pub name: String,
    pub op: Op,
    pub value: String,
    /// The value as a fully anchored regex (for `=~` and `!~`).
    regex: Option<Regex>,
}

impl Matcher {
    /// Whether a stream whose label `name` is `value` (absent = empty, as in Loki) passes.
    pub fn admits(&self, value: Option<&str>) -> bool {
        let v = value.unwrap_or("");
        match (self.op, &self.regex) {
            (Op::Eq, _) => v == self.value,
            (Op::Ne, _) => v != self.value,
            (Op::Re, Some(r)) => r.is_match(v),
            (Op::NotRe, Some(r)) => !r.is_match(v),
            _ => false,
        }
    }
}

/// A line filter: `|=` contains, `!=` does not contain, `|~` matches, `!~` does not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub regex: bool,
    pub negate: bool,
    pub text: String,
}

/// A parsed query.
#[derive(Debug)]
pub enum Expr {
    Logs {
        selector: Vec<Matcher>,
        filters: Vec<Filter>,
    },
    /// A sum of `vector(n)`: a constant.
    Vector(f64),
}

/// Why a query could not be parsed: said with what is supported.
fn refuse(why: &str) -> String {
    format!("query not supported here: {why}; {SUPPORTED}")
}

/// Parses `text` as a query of the subset.
pub fn parse(text: &str) -> Result<Expr, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        at: 0,
    };
    p.skip_ws();
    if p.peek() == Some(b'{') {
        let selector = p.selector()?;
        let mut filters = Vec::new();
        loop {
            p.skip_ws();
            let Some(op) = p.take_any(&["|=", "!=", "|~", "!~"]) else {
                break;
            };
            p.skip_ws();
            let text = p.string()?;
            let (regex, negate) = match op {
                "|=" => (false, false),
                "!=" => (false, true),
                "|~" => (true, false),
                _ => (true, true),
            };
            if regex {
                Regex::new(&text).map_err(|e| format!("line filter regex {text:?}: {e}"))?;
            }
            filters.push(Filter {
                regex,
                negate,
                text,
            });
        }
        if p.at < p.s.len() {
            return Err(refuse(&format!(
                "unexpected {:?} after the line filters",
                p.rest()
            )));
        }
        return Ok(Expr::Logs { selector, filters });
    }
    let mut sum = 0.0;
    loop {
        p.skip_ws();
        if !p.take("vector") {
            return Err(refuse(&format!("{:?} is not a stream selector", p.rest())));
        }
        p.skip_ws();
        if !p.take("(") {
            return Err(refuse("vector needs (n)"));
        }
        let start = p.at;
        while p.peek().is_some_and(|b| b != b')') {
            p.at += 1;
        }
        let n: f64 = std::str::from_utf8(&p.s[start..p.at])
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| refuse("vector(n) takes a number"))?;
        if !p.take(")") {
            return Err(refuse("vector(n is not closed"));
        }
        sum += n;
        p.skip_ws();
        if p.at == p.s.len() {
            return Ok(Expr::Vector(sum));
        }
        if !p.take("+") {
            return Err(refuse(&format!("unexpected {:?}", p.rest())));
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn rest(&self) -> String {
        String::from_utf8_lossy(&self.s[self.at..])
            .chars()
            .take(40)
            .collect()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn take(&mut self, token: &str) -> bool {
        if self.s[self.at..].starts_with(token.as_bytes()) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    fn take_any<'t>(&mut self, tokens: &[&'t str]) -> Option<&'t str> {
        tokens.iter().copied().find(|t| self.take(t))
    }

    fn selector(&mut self) -> Result<Vec<Matcher>, String> {
        self.take("{");
        let mut out = Vec::new();
        loop {
            self.skip_ws();
            if self.take("}") {
                break;
            }
            let start = self.at;
            while self
                .peek()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            {
                self.at += 1;
            }
            if start == self.at {
                return Err(refuse(&format!(
                    "expected a label name in the selector at {:?}",
                    self.rest()
                )));
            }
            let name = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
            self.skip_ws();
            let op = match self.take_any(&["=~", "!~", "!=", "="]) {
                Some("=") => Op::Eq,
                Some("!=") => Op::Ne,
                Some("=~") => Op::Re,
                Some(_) => Op::NotRe,
                None => return Err(refuse(&format!("expected =, !=, =~ or !~ after {name}"))),
            };
            self.skip_ws();
            let value = self.string()?;
            let regex = match op {
                Op::Re | Op::NotRe => Some(
                    Regex::new(&format!("^(?:{value})$"))
                        .map_err(|e| format!("label matcher regex {value:?}: {e}"))?,
                ),
                _ => None,
            };
            out.push(Matcher {
                name,
                op,
                value,
                regex,
            });
            self.skip_ws();
            if self.take(",") {
                continue;
            }
            if self.take("}") {
                break;
            }
            return Err(refuse(&format!(
                "expected , or }} in the selector at {:?}",
                self.rest()
            )));
        }
        // As in Loki: a selector must narrow the streams somehow.
        if !out.iter().any(|m| !m.admits(None)) {
            return Err(
                "a stream selector needs at least one matcher that does not match the empty value, e.g. {host=~\".+\"}"
                    .to_string(),
            );
        }
        Ok(out)
    }

    /// A `"…"` string (backslash escapes) or a `` `…` `` raw string.
    fn string(&mut self) -> Result<String, String> {
        let quote = self.peek();
        if !matches!(quote, Some(b'"') | Some(b'`')) {
            return Err(refuse(&format!(
                "expected a quoted string at {:?}",
                self.rest()
            )));
        }
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(refuse("an unterminated string"));
            };
            self.at += 1;
            if Some(b) == quote {
                break;
            }
            if b == b'\\' && quote == Some(b'"') {
                let Some(e) = self.peek() else {
                    return Err(refuse("an unterminated string"));
                };
                self.at += 1;
                out.push(match e {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    other => other,
                });
                continue;
            }
            out.push(b);
        }
        String::from_utf8(out).map_err(|_| "a string that is not UTF-8".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_filters_parse() {
        let Expr::Logs { selector, filters } = parse(
            r#"{host="web-1", filename=~"/var/log/.*\\.log"} |= "error" != `debug` |~ "id=\\d+""#,
        )
        .expect("parses") else {
            panic!("a log query");
        };
        assert_eq!(selector.len(), 2);
        assert!(selector[1].admits(Some("/var/log/a.log")));
        assert!(!selector[1].admits(Some("/tmp/var/log/a.log")), "anchored");
        assert_eq!(
            filters,
            [
                Filter {
                    regex: false,
                    negate: false,
                    text: "error".into()
                },
                Filter {
                    regex: false,
                    negate: true,
                    text: "debug".into()
                },
                Filter {
                    regex: true,
                    negate: false,
                    text: "id=\\d+".into()
                },
            ]
        );
        assert!(matches!(parse("vector(1)+vector(1)"), Ok(Expr::Vector(v)) if v == 2.0));
        assert!(matches!(parse(" vector( 1 ) + vector(2) "), Ok(Expr::Vector(v)) if v == 3.0));
    }

    #[test]
    fn outside_the_subset_is_refused_with_what_is_supported() {
        for q in [
            r#"rate({host="a"}[5m])"#,
            r#"{host="a"} | json"#,
            r#"{host="a"} |= "x" | line_format "{{.msg}}""#,
            r#"sum by (host) (count_over_time({host="a"}[1m]))"#,
            "{host=\"a\"",
        ] {
            let e = parse(q).expect_err(q);
            assert!(e.contains("supported"), "{q}: {e}");
        }
        let e = parse(r#"{host=~".*"}"#).expect_err("matches everything");
        assert!(e.contains("at least one matcher"), "{e}");
        assert!(parse(r#"{host=~"("}"#).is_err());
    }
}
