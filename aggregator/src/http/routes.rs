//! The route table: `match (method, path)`, small handlers for the listings, and per-request
//! metrics. Every error leaves here as a JSON answer.

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response};

use super::body::{full, Body};
use super::error::ApiError;
use super::{download, ingest, listing, loki_read, push, search};
use crate::metrics::{ErrorLabels, RequestLabels, RouteLabels};
use crate::App;

/// The web page: one self-contained file (HTML, CSS, vanilla JS), no build step.
const PAGE: &str = include_str!("page.html");

/// Serves one request; never fails at the hyper level.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Result<Response<Body>, std::convert::Infallible> {
    let started = Instant::now();
    let (route, result) = route(&app, req, peer).await;
    let mut resp = result.unwrap_or_else(|e| {
        app.metrics
            .http
            .errors
            .get_or_create(&ErrorLabels { kind: e.kind() })
            .inc();
        if e.status.is_server_error() {
            tracing::warn!(route, status = %e.status, error = %e.message, "request failed");
        } else if matches!(e.status, hyper::StatusCode::UNAUTHORIZED | hyper::StatusCode::FORBIDDEN)
            && app.refusals.due(peer.ip())
        {
            // A fleet member with a wrong token is a misconfiguration to see in the log, once
            // a minute per address (the metrics count every refusal).
            tracing::warn!(%peer, route, status = %e.status, error = %e.message, "request refused (logged once a minute per client address)");
        } else {
            tracing::debug!(route, status = %e.status, error = %e.message, "request rejected");
        }
        e.into_response()
    });
    // Agents learn here that they may send several files per request (and fall back when
    // an aggregator does not say so).
    if matches!(route, "batch" | "ruok" | "readyz") && app.settings().multi_file_bodies {
        resp.headers_mut().insert(
            super::ingest_multi::ACCEPT_HEADER,
            HeaderValue::from_static(super::ingest_multi::FORMS),
        );
    }
    app.metrics
        .http
        .requests
        .get_or_create(&RequestLabels {
            route,
            code: resp.status().as_u16(),
        })
        .inc();
    app.metrics
        .http
        .latency
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    Ok(resp)
}

async fn route(
    app: &Arc<App>,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> (&'static str, Result<Response<Body>, ApiError>) {
    let method = req.method().clone();
    if let Some(e) = refused_by_role(app.settings().role, req.uri().path()) {
        return ("role", Err(e));
    }
    match req.uri().path() {
        "/" | "/index.html" => (
            "page",
            only(&method, &Method::GET, "GET").map(|()| text(PAGE, "text/html; charset=utf-8")),
        ),
        "/ruok" => (
            "ruok",
            only(&method, &Method::GET, "GET").map(|()| text("imok", "text/plain")),
        ),
        "/healthz" => (
            "healthz",
            only(&method, &Method::GET, "GET")
                .map(|()| text(r#"{"status":"alive"}"#, "application/json")),
        ),
        // `/ready` is Loki's name for it, which Loki clients and Vector probe.
        "/readyz" | "/ready" => match only(&method, &Method::GET, "GET") {
            Ok(()) => ("readyz", readyz(app).await),
            Err(e) => ("readyz", Err(e)),
        },
        "/loki/api/v1/push" => match only(&method, &Method::POST, "POST") {
            Ok(()) => ("loki_push", push::loki::push(app, req, peer).await),
            Err(e) => ("loki_push", Err(e)),
        },
        "/v1/logs" => match only(&method, &Method::POST, "POST") {
            Ok(()) => ("otlp_logs", push::otlp::push(app, req, peer).await),
            Err(e) => ("otlp_logs", Err(e)),
        },
        "/store/batch" => match only(&method, &Method::POST, "POST") {
            Ok(()) => ("batch", ingest::ingest(app, req).await),
            Err(e) => ("batch", Err(e)),
        },
        "/store/log" => match only(&method, &Method::GET, "GET") {
            Ok(()) => ("log", download::download(app, req).await),
            Err(e) => ("log", Err(e)),
        },
        "/store/search" => match only(&method, &Method::GET, "GET") {
            Ok(()) => ("search", search::search(app, req).await),
            Err(e) => ("search", Err(e)),
        },
        "/store/hosts" => match only(&method, &Method::GET, "GET") {
            Ok(()) => ("hosts", listing::hosts(app, &req).await),
            Err(e) => ("hosts", Err(e)),
        },
        "/store/files" => match only(&method, &Method::GET, "GET") {
            Ok(()) => ("files", listing::files(app, &req).await),
            Err(e) => ("files", Err(e)),
        },
        path if path.starts_with("/loki/api/v1/") => match only(&method, &Method::GET, "GET") {
            Ok(()) => ("loki_read", loki_read::route(app, req).await),
            Err(e) => ("loki_read", Err(e)),
        },
        "/metrics" => match only(&method, &Method::GET, "GET") {
            Ok(()) => {
                app.metrics
                    .retention
                    .store_size
                    .set(app.store.size_on_disk() as i64);
                let ctype = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                ("metrics", Ok(text(app.metrics.render(), ctype)))
            }
            Err(e) => ("metrics", Err(e)),
        },
        path => {
            let shown: String = path.chars().take(100).collect();
            (
                "unknown",
                Err(ApiError::not_found(format!("no route {shown}"))),
            )
        }
    }
}

/// A 404 naming the role for a route this process does not serve, so an agent pointed at a
/// query node (or a browser at an ingest node) is told why.
fn refused_by_role(role: crate::config::Role, path: &str) -> Option<ApiError> {
    let ingest = matches!(path, "/store/batch" | "/loki/api/v1/push" | "/v1/logs");
    let query = matches!(path, "/" | "/index.html")
        || ((path.starts_with("/store/") || path.starts_with("/loki/api/v1/")) && !ingest);
    if (ingest && !role.ingests()) || (query && !role.queries()) {
        let other = if ingest { "ingest" } else { "query" };
        return Some(ApiError::not_found(format!(
            "{path} is not served here: this aggregator's role is {:?}; send it to an aggregator \
             with role \"{other}\" or \"all\"",
            role.name()
        )));
    }
    None
}

fn only(method: &Method, expected: &Method, allow: &'static str) -> Result<(), ApiError> {
    if method == expected || (expected == Method::GET && method == Method::HEAD) {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(allow))
    }
}

fn text(body: impl Into<bytes::Bytes>, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Ready: the store is reachable and takes writes; otherwise 503, so a load balancer sends
/// agents elsewhere.
async fn readyz(app: &App) -> Result<Response<Body>, ApiError> {
    match app.store.ready().await {
        Ok(()) => Ok(text(r#"{"status":"ready"}"#, "application/json")),
        Err(e) => Err(ApiError::new(
            hyper::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {e}"),
        )
        .retry_after(5)),
    }
}
