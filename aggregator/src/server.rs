//! The accept loop: a cap on connections (at the cap the longest-idle keep-alive connection is
//! closed to make room, and only when none is idle does a new one get a 503), each connection
//! served by hyper over a [`ConnIo`] so every error answer is JSON, and graceful shutdown with
//! a deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::connection::{self, ConnIo, GuardedBody, Registry, Stream, MAX_HEAD_BYTES};
use crate::http::error::ApiError;
use crate::http::routes;
use crate::metrics::{ErrorLabels, RequestLabels};
use crate::App;

/// Connections beyond `max_connections` that may wait for an idle one to close or be answered
/// 503; past this they are closed without an answer, so a flood cannot grow memory.
const MAX_WAITING: usize = 64;

/// How long a connection accepted at the cap waits for a reclaimed idle one to go.
const RECLAIM_WAIT: Duration = Duration::from_secs(2);

/// Open connections per client address, so one client cannot take them all.
#[derive(Debug, Default)]
struct Clients(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One connection's place in [`Clients`]; given back on drop.
struct ClientSlot {
    clients: Arc<Clients>,
    ip: std::net::IpAddr,
}

impl Clients {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a new connection from `ip`, unless it already holds `max`.
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<ClientSlot> {
        let mut m = self.lock();
        let n = m.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            clients: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.clients.lock();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Serves until `shutdown` resolves, then drains in-flight requests up to the deadline.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let max = app.settings().max_connections;
    let permits = Arc::new(Semaphore::new(max));
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    let registry = Arc::new(Registry::default());
    let clients = Arc::new(Clients::default());
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.settings().header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Some(slot) = clients.enter(peer.ip(), app.settings().max_connections_per_client) else {
            app.metrics.http.connections_rejected.inc();
            if let Ok(waiter) = waiting.clone().try_acquire_owned() {
                let builder = builder.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    refuse(&app, builder, stream, peer, "too many connections from your address (max_connections_per_client); retry later").await;
                    drop(waiter);
                });
            }
            continue;
        };
        let served = Served {
            _slot: slot,
            app: app.clone(),
            registry: registry.clone(),
            builder: builder.clone(),
            peer,
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(served.run(stream, permit));
            }
            Err(_) => {
                let Ok(waiter) = waiting.clone().try_acquire_owned() else {
                    app.metrics.http.connections_rejected.inc();
                    continue;
                };
                let permits = permits.clone();
                tokio::spawn(async move {
                    let permit = if served.registry.reclaim_idle() {
                        served.app.metrics.http.connections_reclaimed.inc();
                        tokio::time::timeout(RECLAIM_WAIT, permits.acquire_owned())
                            .await
                            .ok()
                            .and_then(Result::ok)
                    } else {
                        None
                    };
                    match permit {
                        Some(permit) => {
                            drop(waiter);
                            served.run(stream, permit).await;
                        }
                        None => {
                            served.app.metrics.http.connections_rejected.inc();
                            refuse(
                                &served.app,
                                served.builder,
                                stream,
                                served.peer,
                                "too many connections; retry later",
                            )
                            .await;
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    tracing::info!("stopped accepting; draining in-flight requests");
    app.begin_shutdown();
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    tokio::select! {
        _ = permits.acquire_many(all) => tracing::info!("all connections closed"),
        () = tokio::time::sleep(app.settings().shutdown_timeout) => {
            tracing::warn!("shutdown deadline passed with connections still open");
        }
    }
}

/// What serving one connection needs.
struct Served {
    /// This connection's place in the per-client count.
    _slot: ClientSlot,
    app: Arc<App>,
    registry: Arc<Registry>,
    builder: http1::Builder,
    peer: std::net::SocketAddr,
}

impl Served {
    /// Serves a connection until the client leaves, the registry reclaims it while idle, or the
    /// server stops; then answers what hyper left unanswered.
    async fn run(self, stream: TcpStream, permit: OwnedSemaphorePermit) {
        let Served {
            app,
            registry,
            builder,
            peer,
            _slot,
        } = self;
        let Some(stream) = secure(&app, stream, peer).await else {
            return;
        };
        let registration = registry.register();
        let state = registration.state.clone();
        let stream = Arc::new(std::sync::Mutex::new(stream));
        let io = TokioIo::new(ConnIo::new(stream.clone(), state.clone()));
        let svc_app = app.clone();
        let svc_state = state.clone();
        let svc = service_fn(move |req| {
            let guard = svc_state.begin_request();
            let app = svc_app.clone();
            async move {
                let busy = app.metrics.http.worker_busy.clone();
                let what: String = format!("{} {}", req.method(), req.uri().path())
                    .chars()
                    .take(80)
                    .collect();
                let resp =
                    crate::busy::Timed::new(routes::handle(app, req, peer), busy, what).await?;
                Ok::<_, std::convert::Infallible>(resp.map(|b| GuardedBody::new(b, guard)))
            }
        });
        app.metrics.http.connections_open.inc();
        // With upgrades: Loki's live tail is a WebSocket.
        let conn = builder.serve_connection(io, svc).with_upgrades();
        tokio::pin!(conn);
        let mut stopping = app.stopping();
        let mut closing = false;
        let result = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                () = state.reclaim_requested(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = stopping.wait_for(|s| *s), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        };
        let mut framing = state.framing_status();
        if let Err(e) = result {
            if e.is_timeout() && state.head_pending() {
                // Headers started but did not finish in time: say so rather than just closing.
                connection::write_answer(&stream, &connection::framing_answer(408), RECLAIM_WAIT)
                    .await;
                framing = Some(408);
            } else {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        if let Some(status) = framing {
            tracing::debug!(%peer, status, "answered a request hyper could not frame");
            let e = ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                "",
            );
            app.metrics
                .http
                .errors
                .get_or_create(&ErrorLabels { kind: e.kind() })
                .inc();
            app.metrics
                .http
                .requests
                .get_or_create(&RequestLabels {
                    route: "unparsed",
                    code: status,
                })
                .inc();
        }
        app.metrics.http.connections_open.dec();
        drop(registration);
        drop(permit);
    }
}

/// The connection as hyper will see it: when the server speaks TLS, the handshake comes
/// first, within `header_read_timeout` (a client that sends half a handshake and goes silent
/// costs its own slot for that long, nothing more). `None` when it failed; counted, and
/// logged at debug level, since scanners and half-open probes are routine.
async fn secure(app: &App, stream: TcpStream, peer: std::net::SocketAddr) -> Option<Stream> {
    let Some(tls) = app.settings().tls.clone() else {
        return Some(Stream::Plain(stream));
    };
    let limit = app.settings().header_read_timeout;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(Stream::Tls(Box::new(s))),
        Ok(Err(e)) => {
            app.metrics.http.tls_handshake_failures.inc();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            app.metrics.http.tls_handshake_failures.inc();
            tracing::debug!(%peer, "TLS handshake did not finish within header_read_timeout");
            None
        }
    }
}

/// Answers 503 on a connection there is no room for (after the TLS handshake, on HTTPS,
/// bounded by the same 5 s as the answer).
async fn refuse(
    app: &App,
    mut b: http1::Builder,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    why: &'static str,
) {
    b.keep_alive(false);
    let Ok(Some(stream)) =
        tokio::time::timeout(Duration::from_secs(5), secure(app, stream, peer)).await
    else {
        return;
    };
    let svc = service_fn(move |_req| async move {
        let e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why).retry_after(1);
        Ok::<_, std::convert::Infallible>(e.into_response())
    });
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        b.serve_connection(TokioIo::new(stream), svc),
    )
    .await;
}
