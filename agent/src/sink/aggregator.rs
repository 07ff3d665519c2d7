//! The HTTP sinks — `aggregator` (`POST /store/batch` in the compact form), `loki` and
//! `otlp` (what they send is [`Protocol`]'s) — over one shared hyper client (connections are
//! reused across all files), optionally compressed, over TLS for an `https://` URL.
//!
//! With several URLs (aggregators sharing one store) batches go round-robin to the healthy
//! ones; an endpoint that refuses connections, times out or answers 5xx is skipped — the
//! same batch goes straight to the next — and retried on its own backoff. A file's batches
//! are still sent one at a time, so its checkpoint order is unchanged.
//!
//! An endpoint that accepts connections and never answers (a hung process, a black-holed
//! route) would hold each batch sent to it for the whole `timeout`. So a request that has no
//! answer after `hedge_after`, from an endpoint that has answered nothing since the request
//! began, is sent to the next endpoint too; the first acknowledgement wins (a resend is
//! idempotent: lines are stored by number). That endpoint is then kept out for at least
//! `timeout`, as one that timed out is: with a 100 ms backoff after a timeout it got the next
//! batch at once and stalled every file ~30 s of every 30 s (issue 29.4).

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use tokio::sync::Semaphore;

use super::coalesce;
use super::endpoint_metrics::{EndpointLabel, EndpointMetrics, EndpointOutcome};
use super::protocol::Protocol;
use super::{BoxFuture, Outcome, Sink};
use crate::config::{Compression, SinkSettings};

/// One request to one endpoint, under way: the endpoint's index and how it ended.
type Attempt<'a> = Pin<Box<dyn Future<Output = (usize, (Outcome, Fault))> + Send + 'a>>;

/// Whether a 2xx answer acknowledges what was sent; if not, why.
type Ack<'a> = dyn Fn(&[u8]) -> Result<(), String> + Sync + 'a;

/// How a request's body is typed and encoded.
#[derive(Debug, Clone, Copy)]
struct Types {
    content_type: &'static str,
    encoding: Option<&'static str>,
    /// In the multi-file form.
    multi: bool,
}

/// The header an aggregator names the compact forms it takes in.
const ACCEPT_FORMS: &str = "x-logship-accept";
/// What an endpoint takes: not known yet (tried in the multi-file form first), one file per
/// request (an older aggregator), several.
const FORMS_UNKNOWN: u8 = 0;
const FORMS_SINGLE: u8 = 1;
const FORMS_MULTI: u8 = 2;

/// What [`AggregatorSink::send_encoded`] says when the request could not go in its form.
fn gone_old() -> Outcome {
    Outcome::Retry {
        reason: "the endpoint takes one file per request".into(),
        after: None,
    }
}

/// Whose a failed attempt is: this host's (429, or a request that could not be built:
/// another endpoint would say the same), the endpoint's (unreachable, 5xx), or the endpoint's
/// silence (no answer within the timeout, which excludes it for at least the timeout). An
/// attempt is marked once, by its caller (a timeout used to count as two failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Host,
    Endpoint,
    Silent,
    /// A multi-file request met an aggregator that takes one file per request: not a
    /// failure, the batch goes again in the single-file form.
    Form,
}

#[derive(Debug)]
pub struct AggregatorSink {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    pub(super) endpoints: Vec<Endpoint>,
    /// Round-robin position.
    next: AtomicUsize,
    pub(super) metrics: EndpointMetrics,
    auth: Option<HeaderValue>,
    compression: Compression,
    /// zstd level (negative levels trade ratio for speed).
    level: i32,
    timeout: Duration,
    hedge_after: Duration,
    protocol: Protocol,
    /// Batches of many files waiting to go out as one request.
    pub(super) joiner: coalesce::Joiner,
}

/// One aggregator URL and whether it is taking batches.
#[derive(Debug)]
pub(super) struct Endpoint {
    url: Uri,
    pub(super) label: String,
    health: Mutex<Health>,
    /// Which compact forms it takes (`FORMS_*`), as its last answer said.
    forms: AtomicU8,
}

#[derive(Debug, Default)]
struct Health {
    /// Failures in a row.
    failures: u32,
    /// Skipped until then (unless every endpoint is).
    down_until: Option<Instant>,
    /// When it last answered anything (any status): alive, if perhaps slow.
    last_answer: Option<Instant>,
}

/// Backoff of a failing endpoint: 100 ms doubling to 10 s, with jitter.
fn endpoint_backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << failures.min(7).saturating_sub(1));
    let base = base.min(Duration::from_secs(10));
    base + base.mul_f64(fastrand::f64() * 0.5)
}

impl Endpoint {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl AggregatorSink {
    pub fn new(s: &SinkSettings, metrics: EndpointMetrics) -> anyhow::Result<Self> {
        let endpoints = s
            .urls
            .iter()
            .map(|u| {
                Ok(Endpoint {
                    url: u.parse()?,
                    label: u.clone(),
                    health: Mutex::default(),
                    forms: AtomicU8::new(FORMS_UNKNOWN),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!endpoints.is_empty(), "sink.url: no URL");
        for e in &endpoints {
            metrics
                .up
                .get_or_create(&EndpointLabel {
                    endpoint: e.label.clone(),
                })
                .set(1);
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.enforce_http(false);
        // A plain http:// URL never uses the TLS config; an empty one stands in.
        let tls = match &s.tls {
            Some(t) => (*t.config).clone(),
            None => rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let auth = s
            .token
            .as_ref()
            .map(|t| {
                let value = match &s.username {
                    // Basic auth, the token as the password (what Loki gateways take).
                    Some(user) => {
                        use base64::Engine as _;
                        let pair = format!("{user}:{}", t.expose());
                        format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode(pair)
                        )
                    }
                    None => format!("Bearer {}", t.expose()),
                };
                HeaderValue::from_str(&value).map(|mut v| {
                    // Kept out of hyper's debug output.
                    v.set_sensitive(true);
                    v
                })
            })
            .transpose()
            .map_err(|_| anyhow::anyhow!("sink.token: not a valid header value"))?;
        Ok(AggregatorSink {
            client,
            endpoints,
            next: AtomicUsize::new(0),
            metrics,
            auth,
            compression: s.compression,
            level: s.compression_level,
            timeout: s.timeout,
            hedge_after: s.hedge_after,
            protocol: Protocol::from_settings(s)?,
            joiner: coalesce::Joiner::new(s.max_request_bytes),
        })
    }

    /// The request body of `pieces` (one body, or a joined request's header and sections),
    /// compressed as configured, without first copying the pieces together.
    pub(super) fn encode(
        &self,
        pieces: &[&[u8]],
    ) -> std::io::Result<(Bytes, Option<&'static str>)> {
        Ok(match self.compression {
            Compression::None => (Bytes::from(pieces.concat()), None),
            Compression::Zstd => match pieces {
                [one] => (Bytes::from(zstd_compress(one, self.level)?), Some("zstd")),
                _ => (
                    Bytes::from(coalesce::zstd_pieces(pieces, self.level)?),
                    Some("zstd"),
                ),
            },
            Compression::Gzip => {
                let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                for p in pieces {
                    g.write_all(p)?;
                }
                (Bytes::from(g.finish()?), Some("gzip"))
            }
        })
    }

    /// Endpoints to try, in order: the healthy ones round-robin, then the skipped ones,
    /// soonest due first.
    /// A multi-file request (`multi`) goes only to endpoints not known to refuse that form.
    fn order(&self, multi: bool) -> Vec<usize> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let mut up = Vec::with_capacity(n);
        let mut down = Vec::new();
        for i in (0..n).map(|k| (start + k) % n) {
            if multi && self.endpoints[i].forms.load(Ordering::Relaxed) == FORMS_SINGLE {
                continue;
            }
            match self.endpoints[i].health().down_until {
                Some(t) if t > now => down.push((t, i)),
                _ => up.push(i),
            }
        }
        down.sort();
        up.extend(down.into_iter().map(|(_, i)| i));
        up
    }

    fn count(&self, ep: &Endpoint, outcome: &'static str) {
        debug_assert!(
            super::endpoint_metrics::OUTCOMES.contains(&outcome),
            "{outcome} missing from OUTCOMES, so a reload would not forget its series"
        );
        self.metrics
            .requests
            .get_or_create(&EndpointOutcome {
                endpoint: ep.label.clone(),
                outcome,
            })
            .inc();
    }

    fn mark(&self, ep: &Endpoint, ok: bool, reason: &str) {
        self.mark_for(ep, ok, reason, Duration::ZERO);
    }

    /// Marks an endpoint that did not answer at all (timed out, or hedged around): out for
    /// at least `timeout`, which is what each batch sent to it would cost.
    fn mark_silent(&self, ep: &Endpoint, reason: &str) {
        self.mark_for(ep, false, reason, self.timeout);
    }

    fn mark_for(&self, ep: &Endpoint, ok: bool, reason: &str, at_least: Duration) {
        let mut h = ep.health();
        if ok {
            if h.failures > 0 {
                tracing::info!(endpoint = %ep.label, "aggregator endpoint answers again");
            }
            let last_answer = h.last_answer;
            *h = Health {
                last_answer,
                ..Health::default()
            };
        } else {
            h.failures += 1;
            let out = endpoint_backoff(h.failures).max(at_least);
            let until = Instant::now() + out;
            // Never shortens a longer exclusion (a late failure after a hedge).
            h.down_until = Some(h.down_until.map_or(until, |d| d.max(until)));
            if h.failures == 1 && self.endpoints.len() > 1 {
                tracing::warn!(endpoint = %ep.label, %reason, "aggregator endpoint failing; sending to the others");
            }
        }
        self.metrics
            .up
            .get_or_create(&EndpointLabel {
                endpoint: ep.label.clone(),
            })
            .set(i64::from(ok));
    }

    /// Sends one batch `body` (or, for Loki and OTLP, its translation) to the first
    /// endpoint that takes it. A multi-file body goes as it is where an endpoint takes that
    /// form, else converted to the single-file form.
    pub(super) async fn attempt(&self, body: &[u8], read_at_ms: u64) -> Outcome {
        let translated = match self.protocol.translate(body, read_at_ms) {
            Ok(t) => t,
            Err(reason) => {
                return Outcome::Reject {
                    reason: format!("cannot translate the batch: {reason}"),
                }
            }
        };
        if let Some(t) = translated {
            let encoded = if t.compressible {
                self.encode(&[&t.payload])
            } else {
                Ok((Bytes::from(t.payload), t.encoding))
            };
            let ack = |answer: &[u8]| self.protocol.acknowledged(answer, body);
            return self
                .send_encoded(encoded, t.content_type, false, &ack)
                .await
                .unwrap_or_else(gone_old);
        }
        if logship_wire::multi::is_multi(body) {
            if self.may_take_multi() {
                let ack = |answer: &[u8]| self.protocol.acknowledged(answer, body);
                let encoded = self.encode(&[body]);
                let sent = self
                    .send_encoded(encoded, logship_wire::COMPACT_CONTENT_TYPE, true, &ack)
                    .await;
                if let Some(outcome) = sent {
                    return outcome;
                }
            }
            let old = match logship_wire::multi::to_compact(body) {
                Ok(b) => b,
                Err(e) => {
                    return Outcome::Reject {
                        reason: format!("cannot convert the batch to the single-file form: {e}"),
                    }
                }
            };
            let ack = |answer: &[u8]| self.protocol.acknowledged(answer, &old);
            let encoded = self.encode(&[&old]);
            return self
                .send_encoded(encoded, logship_wire::COMPACT_CONTENT_TYPE, false, &ack)
                .await
                .unwrap_or_else(gone_old);
        }
        let ack = |answer: &[u8]| self.protocol.acknowledged(answer, body);
        let encoded = self.encode(&[body]);
        self.send_encoded(encoded, logship_wire::COMPACT_CONTENT_TYPE, false, &ack)
            .await
            .unwrap_or_else(gone_old)
    }

    /// Whether any endpoint may take the multi-file form (not known to refuse it).
    pub(super) fn may_take_multi(&self) -> bool {
        matches!(self.protocol, Protocol::Aggregator)
            && self
                .endpoints
                .iter()
                .any(|e| e.forms.load(Ordering::Relaxed) != FORMS_SINGLE)
    }

    /// Sends an encoded request to the first endpoint that takes it; `None` when a
    /// multi-file request (`multi`) met an endpoint that takes one file per request.
    pub(super) async fn send_encoded(
        &self,
        encoded: std::io::Result<(Bytes, Option<&'static str>)>,
        content_type: &'static str,
        multi: bool,
        ack: &Ack<'_>,
    ) -> Option<Outcome> {
        let (payload, encoding) = match encoded {
            Ok(p) => p,
            Err(e) => {
                return Some(Outcome::Reject {
                    reason: format!("compression failed: {e}"),
                })
            }
        };
        let types = Types {
            content_type,
            encoding,
            multi,
        };
        let mut retry = None;
        let mut park = None;
        let order = self.order(multi);
        let mut next = order.iter().copied().peekable();
        // Requests under way: at most one per endpoint, the oldest first in `started`.
        let mut inflight: FuturesUnordered<Attempt<'_>> = FuturesUnordered::new();
        let mut started: Vec<(usize, Instant)> = Vec::new();
        loop {
            if inflight.is_empty() {
                let Some(i) = next.next() else { break };
                inflight.push(self.attempt_boxed(i, ack, payload.clone(), types));
                started.push((i, Instant::now()));
            }
            let hedge_at = started
                .last()
                .filter(|_| !self.hedge_after.is_zero() && next.peek().is_some())
                .map(|&(_, t)| t + self.hedge_after);
            let hedge = async {
                match hedge_at {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            let (i, (outcome, fault)) = tokio::select! {
                done = inflight.next() => match done {
                    Some(d) => d,
                    None => continue,
                },
                () = hedge => {
                    // Only an endpoint that answered nothing since this request began is
                    // suspect: a busy one that still answers others is just slow.
                    let Some(last) = started.last_mut() else { continue };
                    let (i, since) = *last;
                    let ep = &self.endpoints[i];
                    if ep.health().last_answer.is_some_and(|t| t >= since) {
                        // Alive: look again after another `hedge_after`.
                        last.1 = Instant::now();
                        continue;
                    }
                    let Some(j) = next.next() else { continue };
                    self.count(ep, "hedged");
                    self.mark_silent(
                        ep,
                        &format!("{}: no answer within {:?}", ep.label, self.hedge_after),
                    );
                    inflight.push(self.attempt_boxed(j, ack, payload.clone(), types));
                    started.push((j, Instant::now()));
                    continue;
                }
            };
            let ep = &self.endpoints[i];
            started.retain(|&(k, _)| k != i);
            match outcome {
                _ if fault == Fault::Form => {
                    tracing::info!(endpoint = %ep.label, "the aggregator takes one file per request (an older version); sending in the single-file form");
                    return None;
                }
                Outcome::Ok => {
                    self.count(ep, "ok");
                    self.metrics
                        .last_ack
                        .get_or_create(&EndpointLabel {
                            endpoint: ep.label.clone(),
                        })
                        .set(unix_now_secs());
                    self.mark(ep, true, "");
                    return Some(Outcome::Ok);
                }
                Outcome::Retry { ref reason, .. } if fault != Fault::Host => {
                    self.count(ep, "retry");
                    if fault == Fault::Silent {
                        self.mark_silent(ep, reason);
                    } else {
                        self.mark(ep, false, reason);
                    }
                    retry = Some(outcome);
                }
                Outcome::Park { ref reason, .. } => {
                    self.count(ep, "park");
                    self.mark(ep, false, reason);
                    park = Some(outcome);
                }
                Outcome::Retry { .. } => {
                    // 429: this host's own limit, which another endpoint would apply too.
                    self.count(ep, "retry");
                    return Some(outcome);
                }
                Outcome::TooLarge => {
                    self.count(ep, "too_large");
                    return Some(outcome);
                }
                Outcome::Reject { .. } => {
                    self.count(ep, "reject");
                    return Some(outcome);
                }
            }
        }
        // Every endpoint failed: a retry if any may come back by itself, else the park.
        Some(retry.or(park).unwrap_or(Outcome::Retry {
            reason: "no endpoint".into(),
            after: None,
        }))
    }

    fn attempt_boxed<'a>(
        &'a self,
        i: usize,
        ack: &'a Ack<'a>,
        payload: Bytes,
        types: Types,
    ) -> Attempt<'a> {
        Box::pin(async move {
            let r = self
                .attempt_at(&self.endpoints[i], ack, payload, types)
                .await;
            (i, r)
        })
    }

    /// One request to one endpoint; also says whether a retryable failure is the endpoint's
    /// (unreachable, timed out, 5xx: worth trying another) rather than this host's (429).
    async fn attempt_at(
        &self,
        ep: &Endpoint,
        ack: &Ack<'_>,
        payload: Bytes,
        Types {
            content_type,
            encoding,
            multi,
        }: Types,
    ) -> (Outcome, Fault) {
        let mut req = Request::post(ep.url.clone())
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(payload));
        if let Ok(r) = &mut req {
            self.protocol.headers(r.headers_mut());
            if let Some(enc) = encoding {
                r.headers_mut()
                    .insert(CONTENT_ENCODING, HeaderValue::from_static(enc));
            }
            if let Some(a) = &self.auth {
                r.headers_mut().insert(AUTHORIZATION, a.clone());
            }
        }
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                return (
                    Outcome::Reject {
                        reason: format!("cannot build request: {e}"),
                    },
                    Fault::Host,
                )
            }
        };
        let resp = match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => {
                return (
                    Outcome::Retry {
                        reason: format!("{}: no answer within {:?}", ep.label, self.timeout),
                        after: None,
                    },
                    Fault::Silent,
                );
            }
            Ok(Err(e)) => {
                // A refused handshake or certificate is the configuration's fault: park.
                if let Some(reason) = crate::client_tls::tls_failure(&e) {
                    return (
                        Outcome::Park {
                            endpoint: ep.label.clone(),
                            reason: format!("TLS: {reason}"),
                        },
                        Fault::Endpoint,
                    );
                }
                return (
                    Outcome::Retry {
                        reason: format!(
                            "{}: request failed: {}",
                            ep.label,
                            logship_common::error_chain(&e)
                        ),
                        after: None,
                    },
                    Fault::Endpoint,
                );
            }
            Ok(Ok(r)) => r,
        };
        ep.health().last_answer = Some(Instant::now());
        let status = resp.status();
        if matches!(self.protocol, Protocol::Aggregator) {
            // Every answer of an aggregator that takes the multi-file form says so; one
            // that does not is an older aggregator (or a proxy's own answer, corrected by
            // the next answer that comes through).
            let takes = resp
                .headers()
                .get(ACCEPT_FORMS)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|f| f.trim() == "LSB2"));
            let forms = if takes { FORMS_MULTI } else { FORMS_SINGLE };
            ep.forms.store(forms, Ordering::Relaxed);
            if multi && !takes && matches!(status.as_u16(), 400 | 415) {
                return (
                    Outcome::Retry {
                        reason: format!("{}: takes one file per request", ep.label),
                        after: None,
                    },
                    Fault::Form,
                );
            }
        }
        let after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Read the body (so the connection goes back to the pool), at most 64 KiB of it.
        let collect = http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect();
        let answer = match tokio::time::timeout(self.timeout, collect).await {
            Ok(Ok(b)) => b.to_bytes(),
            _ => Bytes::new(),
        };
        let endpoint = || ep.label.clone();
        let fault = if status == StatusCode::TOO_MANY_REQUESTS {
            Fault::Host
        } else {
            Fault::Endpoint
        };
        let outcome = match classify(status, after, &answer) {
            Verdict::Ok => match ack(&answer) {
                Ok(()) => Outcome::Ok,
                Err(why) => Outcome::Park {
                    endpoint: endpoint(),
                    reason: format!("answered {status} {why} ({})", shown(&answer)),
                },
            },
            Verdict::Park(reason) => Outcome::Park {
                endpoint: endpoint(),
                reason,
            },
            Verdict::Other(o) => o,
        };
        (outcome, fault)
    }
}

thread_local! {
    /// One zstd context per worker thread: creating a context per batch cost ~4% of the
    /// agent's CPU in the profile.
    static ZSTD: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

fn zstd_compress(body: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        match slot.as_mut() {
            Some((_, c)) => c.compress(body),
            None => zstd::bulk::compress(body, level),
        }
    })
}

/// What an answer's status means, before the acknowledgement itself is checked.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// 2xx: an acknowledgement if the body says so.
    Ok,
    /// The endpoint refuses for a reason that is not the batch's fault.
    Park(String),
    Other(Outcome),
}

/// A short, printable rendering of an answer body for logs.
fn shown(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Maps an answer's status to what the sender should do. Only 400 and 422 blame the batch
/// (it is malformed, and resending it cannot help); every other refusal is about the
/// endpoint — a wrong token, URL or method — and fixing the config must deliver the batch.
fn classify(status: StatusCode, after: Option<Duration>, body: &[u8]) -> Verdict {
    let reason = format!("{status}: {}", shown(body));
    match status.as_u16() {
        200..=299 => Verdict::Ok,
        408 | 429 | 500..=599 => Verdict::Other(Outcome::Retry { reason, after }),
        413 => Verdict::Other(Outcome::TooLarge),
        400 | 422 => Verdict::Other(Outcome::Reject { reason }),
        _ => Verdict::Park(reason),
    }
}

impl Sink for AggregatorSink {
    fn send<'a>(&'a self, body: &'a [u8]) -> BoxFuture<'a, Outcome> {
        Box::pin(self.attempt(body, crate::batcher::wall_ms()))
    }

    fn send_at<'a>(&'a self, body: &'a [u8], read_at_ms: u64) -> BoxFuture<'a, Outcome> {
        Box::pin(self.attempt(body, read_at_ms))
    }

    /// Batches in the multi-file form ride in requests joined with other files' batches.
    fn deliver<'a>(
        &'a self,
        body: &'a Arc<Vec<u8>>,
        read_at_ms: u64,
        in_flight: &'a Arc<Semaphore>,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            if logship_wire::multi::is_multi(body) && self.may_take_multi() {
                return self.joined(body, read_at_ms, in_flight).await;
            }
            let _permit = in_flight.acquire().await;
            self.attempt(body, read_at_ms).await
        })
    }

    fn places_by_number(&self) -> bool {
        matches!(self.protocol, Protocol::Aggregator)
    }

    /// Reachable when a TCP connection to any aggregator opens within 2 s.
    fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut errors = Vec::new();
            for ep in &self.endpoints {
                match reachable(&ep.url).await {
                    Ok(()) => return Ok(()),
                    Err(e) => errors.push(e),
                }
            }
            Err(errors.join("; "))
        })
    }
}

async fn reachable(url: &Uri) -> Result<(), String> {
    let host = url.host().unwrap_or("localhost").trim_matches(['[', ']']);
    let default_port = if url.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let port = url.port_u16().unwrap_or(default_port);
    let connect = tokio::net::TcpStream::connect((host, port));
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{url}: {e}")),
        Err(_) => Err(format!("{url}: no connection within 2 s")),
    }
}

/// Now as a Unix time in seconds (0 before 1970: a clock that wrong shows as such).
fn unix_now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_actions() {
        let s = |c: u16| classify(StatusCode::from_u16(c).expect("status"), None, b"");
        assert_eq!(s(200), Verdict::Ok);
        for c in [408, 429, 500, 503] {
            assert!(matches!(s(c), Verdict::Other(Outcome::Retry { .. })), "{c}");
        }
        assert_eq!(s(413), Verdict::Other(Outcome::TooLarge));
        for c in [400, 422] {
            assert!(
                matches!(s(c), Verdict::Other(Outcome::Reject { .. })),
                "{c}"
            );
        }
        for c in [401, 403, 404, 405, 415, 421] {
            assert!(matches!(s(c), Verdict::Park(_)), "{c}");
        }
    }

    /// A request the endpoint never answers counts as one failure, not two (the attempt and
    /// its caller both marked it, doubling the endpoint's exclusion).
    #[tokio::test]
    async fn a_timeout_counts_as_one_failure() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = silent.local_addr().expect("addr");
        // Accepts and holds connections, never answering.
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((c, _)) = silent.accept().await {
                open.push(c);
            }
        });
        let settings = SinkSettings {
            name: "aggregator".into(),
            kind: "aggregator".into(),
            urls: vec![format!("http://{addr}/store/batch")],
            token: None,
            compression: crate::config::Compression::None,
            compression_level: 0,
            timeout: Duration::from_millis(100),
            hedge_after: Duration::ZERO,
            max_request_bytes: 1 << 20,
            tls: None,
            labels: Vec::new(),
            tenant: None,
            loki_json: false,
            username: None,
        };
        let sink = AggregatorSink::new(&settings, EndpointMetrics::default()).expect("sink");
        let body = logship_wire::compact::Writer::new("h", "/f", "g", 0).finish();
        let outcome = sink.send(&body).await;
        assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
        assert_eq!(sink.endpoints[0].health().failures, 1);
        held.abort();
    }
}
