//! Every error answer: a status, a JSON `{"error": "…"}` that says what was wrong, and a
//! `Retry-After` where waiting helps.

use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};

use super::body::{full, Body};
use crate::store::StoreError;

/// An error answer, built by handlers and rendered once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds the client should wait before retrying.
    pub retry_after: Option<u64>,
    /// Methods allowed on the path, for 405.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
            allow: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        ApiError {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method not allowed here; use {allow}"),
            )
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// A short label for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "bad_request",
            401 => "unauthorized",
            404 => "not_found",
            405 => "method_not_allowed",
            408 => "timeout",
            413 => "too_large",
            415 => "unsupported_encoding",
            429 => "rate_limited",
            503 => "unavailable",
            _ => "other",
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut resp = Response::new(full(body));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(secs) = self.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(allow) = self.allow {
            h.insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let report = e.report();
        tracing::error!(error = %report, "store error");
        if e.is_unavailable() {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, report).retry_after(5)
        } else {
            // Corrupt data, or a kind the store may add later: the server's fault.
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, report)
        }
    }
}
