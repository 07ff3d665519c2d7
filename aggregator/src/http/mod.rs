//! The HTTP layer: routes, request parsing, bodies and error answers.

pub mod body;
pub mod download;
pub mod error;
pub mod ingest;
pub mod ingest_multi;
pub mod line_json;
pub mod listing;
pub mod loki_read;
pub mod push;
pub mod query;
pub mod routes;
pub mod search;
