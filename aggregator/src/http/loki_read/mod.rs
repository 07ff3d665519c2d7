//! Loki's query API, so Grafana's Loki data source (and `logcli`) read the store:
//! `labels`, `label/<name>/values`, `series`, `query_range`, `query` (log queries, and the
//! `vector(1)+vector(1)` Grafana's "Save & test" sends) and `tail` (WebSocket), answered in
//! the shapes of Loki's HTTP API. Streams are the stored files ([`streams`]); log queries
//! run on the search engine ([`range`]); the LogQL subset is in [`logql`].

mod logql;
mod range;
mod streams;
pub mod tail;

use std::collections::BTreeSet;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};

use super::body::{full, Body};
pub use super::error::ApiError;
use crate::App;
use logql::Expr;

/// `{"status":"success","data":…}` as JSON.
fn success(data: serde_json::Value) -> Response<Body> {
    let body = serde_json::json!({"status": "success", "data": data}).to_string();
    let mut resp = Response::new(full(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The query's parameters; Loki's clients send a few this answer does not use (`step`,
/// `interval`), which are accepted and ignored, as are unknown ones (Grafana adds its own).
fn params(req: &Request<Incoming>) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'a>(p: &'a [(String, String)], name: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The optional selector of `labels`/`label values` (`query=`), or all streams.
fn optional_selector(p: &[(String, String)]) -> Result<Vec<logql::Matcher>, ApiError> {
    match param(p, "query").filter(|q| !q.trim().is_empty()) {
        None => Ok(Vec::new()),
        Some(q) => selector_of(q),
    }
}

fn selector_of(q: &str) -> Result<Vec<logql::Matcher>, ApiError> {
    match logql::parse(q).map_err(ApiError::bad_request)? {
        Expr::Logs { selector, filters } if filters.is_empty() => Ok(selector),
        _ => Err(ApiError::bad_request(format!(
            "expected a stream selector such as {{host=\"web-1\"}}, not {q:?}"
        ))),
    }
}

/// Serves one `/loki/api/v1/…` read route.
pub async fn route(
    app: &std::sync::Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    crate::http::push::authorize_with(app, &req, &app.settings().read_tokens)?;
    let path = req.uri().path().to_owned();
    let rest = path.trim_start_matches("/loki/api/v1/");
    let p = params(&req);
    match rest {
        "labels" => labels(app, &p, None).await,
        "series" => series(app, &req, &p).await,
        "query_range" => query(app, &p, true).await,
        "query" => query(app, &p, false).await,
        "tail" => tail::tail(app, req, &p).await,
        other => match other
            .strip_prefix("label/")
            .and_then(|r| r.strip_suffix("/values"))
        {
            Some(name) => labels(app, &p, Some(name)).await,
            None => Err(ApiError::not_found(format!(
                "no route {path}; the Loki read API here has labels, label/<name>/values, series, query_range, query and tail"
            ))),
        },
    }
}

/// `labels` (every label name) or `label/<name>/values` (that label's values), over the
/// streams the optional `query=` selects.
async fn labels(
    app: &App,
    p: &[(String, String)],
    name: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let selector = optional_selector(p)?;
    let mut out = BTreeSet::new();
    streams::each_stream(&*app.store, |_, _, labels| {
        if streams::admits(&selector, &labels) {
            match name {
                None => out.extend(labels.into_keys()),
                Some(n) => out.extend(labels.get(n).cloned()),
            }
        }
        out.len() < streams::MAX_STREAMS
    })
    .await?;
    Ok(success(serde_json::json!(out)))
}

/// `series?match[]=…`: the label sets of the streams any of the selectors admits (Grafana
/// sends it by GET, and by POST with a form).
async fn series(
    app: &App,
    req: &Request<Incoming>,
    p: &[(String, String)],
) -> Result<Response<Body>, ApiError> {
    if req.method() == hyper::Method::POST {
        return Err(ApiError::new(
            hyper::StatusCode::METHOD_NOT_ALLOWED,
            "send series with GET and match[] in the query string",
        ));
    }
    let selectors = p
        .iter()
        .filter(|(k, _)| k == "match[]" || k == "match")
        .map(|(_, v)| selector_of(v))
        .collect::<Result<Vec<_>, _>>()?;
    if selectors.is_empty() {
        return Err(ApiError::bad_request(
            "missing parameter `match[]` (a stream selector)",
        ));
    }
    let mut out = Vec::new();
    streams::each_stream(&*app.store, |_, _, labels| {
        if selectors.iter().any(|s| streams::admits(s, &labels)) {
            out.push(serde_json::json!(labels));
        }
        out.len() < streams::MAX_STREAMS
    })
    .await?;
    Ok(success(serde_json::Value::Array(out)))
}

/// `query_range` (`range`) or `query`: a log query, or the constant Grafana tests with.
async fn query(app: &App, p: &[(String, String)], range: bool) -> Result<Response<Body>, ApiError> {
    let text =
        param(p, "query").ok_or_else(|| ApiError::bad_request("missing parameter `query`"))?;
    let expr = logql::parse(text).map_err(ApiError::bad_request)?;
    let now = range::now_ns();
    match expr {
        Expr::Vector(v) => {
            let at = param(p, "time")
                .map(|t| range::time_ns("time", t))
                .transpose()?
                .unwrap_or(now) as f64
                / 1e9;
            let result = if range {
                serde_json::json!({"resultType": "matrix", "result": [{"metric": {}, "values": [[at, format_number(v)]]}]})
            } else {
                serde_json::json!({"resultType": "vector", "result": [{"metric": {}, "value": [at, format_number(v)]}]})
            };
            Ok(success(result))
        }
        Expr::Logs { selector, filters } => {
            let (start_ns, end_ns) = if range {
                let end = param(p, "end")
                    .map(|t| range::time_ns("end", t))
                    .transpose()?
                    .unwrap_or(now);
                let start = param(p, "start")
                    .map(|t| range::time_ns("start", t))
                    .transpose()?
                    .unwrap_or(end.saturating_sub(3_600_000_000_000));
                (start, end)
            } else {
                let at = param(p, "time")
                    .map(|t| range::time_ns("time", t))
                    .transpose()?
                    .unwrap_or(now);
                (at.saturating_sub(3_600_000_000_000), at)
            };
            if start_ns > end_ns {
                return Err(ApiError::bad_request("`start` is after `end`"));
            }
            let limit = match param(p, "limit") {
                None => 100,
                Some(l) => l.parse::<u64>().ok().filter(|&n| n > 0).ok_or_else(|| {
                    ApiError::bad_request("parameter `limit` must be a positive integer")
                })?,
            };
            let backward = match param(p, "direction")
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("backward") => true,
                Some("forward") => false,
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "parameter `direction` must be backward or forward",
                    ))
                }
            };
            let data = range::run(
                app,
                range::Ask {
                    selector: &selector,
                    filters: &filters,
                    start_ns,
                    end_ns,
                    limit,
                    backward,
                },
            )
            .await?;
            Ok(success(data))
        }
    }
}

/// A sample value as Prometheus writes it: `2`, not `2.0`.
fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        v.to_string()
    }
}
