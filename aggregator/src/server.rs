//! The accept loop: a cap on connections (past it a connection gets a 503 and is closed), a
//! header-read timeout against slow clients, and graceful shutdown with a deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::http::error::ApiError;
use crate::http::routes;
use crate::App;

/// Connections beyond `max_connections` that may be answered 503 at once; past this they are
/// closed without an answer, so a flood cannot grow memory.
const MAX_REJECTING: usize = 64;

/// Serves until `shutdown` resolves, then drains in-flight requests up to the deadline.
pub async fn serve(app: Arc<App>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(app.settings.max_connections));
    let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.settings.header_read_timeout)
        .max_buf_size(64 * 1024);
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
        let io = TokioIo::new(stream);
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let app2 = app.clone();
                let conn = builder
                    .serve_connection(io, service_fn(move |req| routes::handle(app2.clone(), req)));
                let conn = graceful.watch(conn);
                let metrics_app = app.clone();
                tokio::spawn(async move {
                    metrics_app.metrics.connections_open.inc();
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    metrics_app.metrics.connections_open.dec();
                    drop(permit);
                });
            }
            Err(_) => {
                app.metrics.connections_rejected.inc();
                let Ok(permit) = rejecting.clone().try_acquire_owned() else {
                    continue;
                };
                let mut b = builder.clone();
                b.keep_alive(false);
                tokio::spawn(async move {
                    let svc = service_fn(|_req| async {
                        let e = ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "too many connections; retry later",
                        )
                        .retry_after(1);
                        Ok::<_, std::convert::Infallible>(e.into_response())
                    });
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), b.serve_connection(io, svc))
                            .await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    tracing::info!("stopped accepting; draining in-flight requests");
    app.begin_shutdown();
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(app.settings.shutdown_timeout) => {
            tracing::warn!("shutdown deadline passed with connections still open");
        }
    }
}
