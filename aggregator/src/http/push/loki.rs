//! `POST /loki/api/v1/push`: Loki's push API, protobuf + snappy (Promtail, Alloy, Fluent Bit)
//! or JSON (optionally gzip), answered as Loki does: 204 when stored, 400 naming the
//! entries refused (the others are stored, as Loki does).

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::super::body::{full, Body};
use super::super::error::ApiError;
use super::super::ingest::Received;
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
    let json = content_type
        .as_deref()
        .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/json"));
    let streams = if json {
        budget
            .reserve(logship_wire::loki::json_memory(&data))
            .await?;
        crate::busy::offload_if(data.len() > crate::busy::INLINE_BYTES, || {
            logship_wire::loki::decode_json(&data, &limits)
        })
        .map_err(decode_error)?
    } else {
        let raw = unsnap(&mut budget, &data, settings.max_decoded_bytes).await?;
        let messages = crate::busy::offload_if(raw.len() > crate::busy::INLINE_BYTES, || {
            logship_wire::loki::check_protobuf(&raw, &limits)
        })
        .map_err(decode_error)?;
        budget
            .reserve((messages * logship_wire::loki::MESSAGE_BYTES) as u64)
            .await?;
        crate::busy::offload_if(raw.len() > crate::busy::INLINE_BYTES, || {
            logship_wire::loki::decode_protobuf(raw, &limits)
        })
        .map_err(decode_error)?
    };
    let default_host = super::default_host(app, peer);
    let mapping = Mapping {
        host_keys: &settings.push.host_labels,
        file_keys: &settings.push.file_labels,
        keep: None,
        default_host: &default_host,
        fallback_file: "loki",
    };
    let outcome = super::store(app, streams, &mapping).await?;
    app.metrics
        .ingest
        .pushed("loki", outcome.stored, outcome.duplicates, outcome.rejected);
    if outcome.rejected > 0 {
        return Err(ApiError::bad_request(format!(
            "{} entries refused, the rest stored: {}",
            outcome.rejected, outcome.why
        )));
    }
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

/// A decode error as its answer: 413 for a body over a count limit, 400 otherwise.
pub(super) fn decode_error(e: logship_wire::DecodeError) -> ApiError {
    match e {
        logship_wire::DecodeError::TooLarge(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m),
        e => ApiError::bad_request(e.to_string()),
    }
}

/// Undoes the snappy block compression of a protobuf push, within `max` bytes and the
/// memory budget (the length it declares is checked before anything is allocated).
async fn unsnap(
    budget: &mut super::super::ingest::Budget,
    data: &Bytes,
    max: u64,
) -> Result<Bytes, ApiError> {
    let len = snap::raw::decompress_len(data).map_err(|e| {
        ApiError::bad_request(format!("protobuf push body is not snappy-compressed: {e}"))
    })?;
    if len as u64 > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body decompresses to {len} bytes, more than max_decoded_bytes ({max} bytes)"),
        ));
    }
    budget.reserve(len as u64).await?;
    let out = crate::busy::offload_if(len > crate::busy::INLINE_BYTES, || {
        snap::raw::Decoder::new().decompress_vec(data)
    })
    .map_err(|e| ApiError::bad_request(format!("snappy body is damaged: {e}")))?;
    Ok(Bytes::from(out))
}
