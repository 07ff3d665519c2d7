//! The benchmark's own HTTP client (plain, or HTTPS trusting a `--tls` run's CA).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A client for `http://` and, after `--tls` set up its CA, `https://` URLs.
pub fn client() -> HttpClient {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(crate::tls::client_config())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

pub async fn get(c: &HttpClient, url: &str) -> anyhow::Result<(u16, Bytes)> {
    let req = hyper::Request::get(url).body(Full::new(Bytes::new()))?;
    let resp = c.request(req).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

pub async fn post(c: &HttpClient, url: &str, body: Bytes) -> anyhow::Result<u16> {
    post_typed(c, url, body, logship_wire::COMPACT_CONTENT_TYPE).await
}

/// Posts `body` as `ctype`; the answer's status.
pub async fn post_typed(
    c: &HttpClient,
    url: &str,
    body: Bytes,
    ctype: &str,
) -> anyhow::Result<u16> {
    let req = hyper::Request::post(url)
        .header("content-type", ctype)
        .body(Full::new(body))?;
    let resp = c.request(req).await?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

/// Lines stored for `host` (every host when `None`), summed over files and generations.
pub async fn total_lines(c: &HttpClient, base: &str, host: Option<&str>) -> anyhow::Result<u64> {
    let query = host.map_or_else(String::new, |h| format!("?host={h}"));
    let (status, body) = get(c, &format!("{base}/store/files{query}")).await?;
    if status != 200 {
        return Ok(0);
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(v["files"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|f| f["generations"].as_array().cloned().unwrap_or_default())
        .map(|g| g["lines"].as_u64().unwrap_or(0))
        .sum())
}
