//! `POST /v1/logs`: OTLP/HTTP logs, protobuf or JSON (gzip allowed), answered with an
//! `ExportLogsServiceResponse` in the request's encoding, with `partial_success` naming the
//! records refused (the others are stored).

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use super::super::body::{full, Body};
use super::super::error::ApiError;
use super::super::ingest::Received;
use super::loki::decode_error;
use super::mapping::Mapping;
use crate::App;

pub async fn push(
    app: &App,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let (
        Received {
            data,
            content_type,
            mut budget,
        },
        settings,
    ) = super::receive_push(app, req).await?;
    let limits = settings.decode_limits;
    let kind = content_type.as_deref().map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let json = match kind.as_deref() {
        Some("application/json") => true,
        Some("application/x-protobuf") | Some("application/protobuf") => false,
        other => {
            let shown: String = other.unwrap_or("none").chars().take(64).collect();
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Type {shown:?} not supported; OTLP/HTTP sends application/x-protobuf or application/json"
                ),
            ));
        }
    };
    let large = data.len() > crate::busy::INLINE_BYTES;
    let streams = if json {
        budget
            .reserve(logship_wire::otlp::json_memory(&data))
            .await?;
        crate::busy::offload_if(large, || logship_wire::otlp::decode_json(&data, &limits))
            .map_err(decode_error)?
    } else {
        let messages =
            crate::busy::offload_if(large, || logship_wire::otlp::check_protobuf(&data, &limits))
                .map_err(decode_error)?;
        budget
            .reserve((messages * logship_wire::otlp::MESSAGE_BYTES) as u64)
            .await?;
        crate::busy::offload_if(large, || {
            logship_wire::otlp::decode_protobuf(data.clone(), &limits)
        })
        .map_err(decode_error)?
    };
    let default_host = super::default_host(app, peer);
    let mapping = Mapping {
        host_keys: &settings.push.otlp_host_attributes,
        file_keys: &settings.push.otlp_file_attributes,
        keep: Some(&settings.push.otlp_labels),
        default_host: &default_host,
        fallback_file: "otlp",
    };
    let outcome = super::store(app, streams, &mapping).await?;
    app.metrics
        .ingest
        .pushed("otlp", outcome.stored, outcome.duplicates, outcome.rejected);
    let body = logship_wire::otlp::response(outcome.rejected, &outcome.why, json);
    let mut resp = Response::new(full(body));
    let ctype = if json {
        "application/json"
    } else {
        "application/x-protobuf"
    };
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    Ok(resp)
}
