//! One accepted connection as the server sees it, beside what hyper sees.
//!
//! Hyper answers three things on its own, before any of our code runs: a request head it cannot
//! parse (400: bad request line, bad `Content-Length`, …), one too long (414) and headers too
//! large (431) — each with an empty body; and it closes a connection whose headers arrive too
//! slowly without any answer. Clients of this API are promised a JSON `{"error": …}` on every
//! 4xx, so [`ConnIo`] sits under hyper: it recognises hyper's automatic answer (a response
//! written while no request of ours is in progress but bytes of one have arrived) and writes
//! ours in its place, and it shares the socket with the connection task, which writes the 408
//! when hyper gives up on slow headers.
//!
//! Under TLS the same holds one layer up: [`ConnIo`] sits on the decrypted [`Stream`], so
//! every replacement answer is encrypted like any other.
//!
//! [`ConnState`] also tells whether a connection is idle (a keep-alive connection between
//! requests), so that at `max_connections` the server closes the longest-idle connection
//! instead of refusing a new client — what nginx does, and what lets more agents than the cap
//! share it without waiting out `Retry-After`.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// An accepted connection, plain or TLS.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The stream shared by hyper (through [`ConnIo`]) and the connection task, which writes
/// the 408 after hyper gave up on slow headers. Locked only inside a poll, never across an
/// await, so the lock is never contended for long.
pub type Shared = Arc<Mutex<Stream>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Stream> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// `idle_since` of a connection that has not finished a request yet.
const NEVER_SERVED: u64 = u64::MAX;

/// The most hyper buffers for a request line and headers; past it, 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What the server knows about one connection, shared by its socket wrapper, its request
/// handlers and the registry.
#[derive(Debug)]
pub struct ConnState {
    /// Requests handed to the routes whose response body has not finished.
    active: AtomicUsize,
    /// Bytes arrived since the last response finished (or since accept): a request is coming.
    reading: AtomicBool,
    /// When the connection last became idle, as a registry-wide sequence number (so ties
    /// cannot happen); [`NEVER_SERVED`] until its first response is out (a client that
    /// connected and has not sent yet is slow, not idle, and is left to `header_read_timeout`).
    idle_since: AtomicU64,
    /// Set once the registry picked this connection to close.
    reclaimed: AtomicBool,
    reclaim: Notify,
    /// The status of an answer hyper made and [`ConnIo`] replaced, for the metrics.
    framing_status: AtomicU16,
    /// The registry's sequence of idle moments.
    idle_clock: Arc<AtomicU64>,
}

impl ConnState {
    /// Marks a request as in progress until the returned guard (kept by its response body) drops.
    pub fn begin_request(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        RequestGuard(self.clone())
    }

    /// Bytes of a request have arrived and hyper has not handed it to us yet.
    pub fn head_pending(&self) -> bool {
        self.reading.load(Ordering::SeqCst) && self.active.load(Ordering::SeqCst) == 0
    }

    fn is_idle(&self) -> bool {
        self.idle_since.load(Ordering::SeqCst) != NEVER_SERVED
            && !self.reading.load(Ordering::SeqCst)
            && self.active.load(Ordering::SeqCst) == 0
            && !self.reclaimed.load(Ordering::SeqCst)
    }

    /// Resolves when the registry asks this connection to close (it is idle and a new client
    /// needs its place).
    pub async fn reclaim_requested(&self) {
        self.reclaim.notified().await;
    }

    /// The status of the framing error answered on this connection, if any.
    pub fn framing_status(&self) -> Option<u16> {
        match self.framing_status.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}

/// Ends a request's "in progress" mark when dropped.
#[derive(Debug)]
pub struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let s = &self.0;
        if s.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            // The response is out; whatever is read next belongs to the next request.
            s.reading.store(false, Ordering::SeqCst);
            let now = s.idle_clock.fetch_add(1, Ordering::SeqCst);
            s.idle_since.store(now, Ordering::SeqCst);
        }
    }
}

/// A response body that holds its request's [`RequestGuard`] until hyper drops it, which is
/// when the response has been written out or abandoned.
#[derive(Debug)]
pub struct GuardedBody<B> {
    inner: B,
    _guard: RequestGuard,
}

impl<B> GuardedBody<B> {
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        GuardedBody {
            inner,
            _guard: guard,
        }
    }
}

impl<B: HttpBody + Unpin> HttpBody for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Every open connection, so the longest-idle one can be closed when the cap is reached.
#[derive(Debug)]
pub struct Registry {
    idle_clock: Arc<AtomicU64>,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            idle_clock: Arc::new(AtomicU64::new(0)),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        }
    }
}

impl Registry {
    /// Adds a new connection; [`Registration`] removes it when dropped.
    pub fn register(self: &Arc<Self>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            active: AtomicUsize::new(0),
            reading: AtomicBool::new(false),
            idle_since: AtomicU64::new(NEVER_SERVED),
            reclaimed: AtomicBool::new(false),
            reclaim: Notify::new(),
            framing_status: AtomicU16::new(0),
            idle_clock: self.idle_clock.clone(),
        });
        self.lock().insert(id, state.clone());
        Registration {
            registry: self.clone(),
            id,
            state,
        }
    }

    /// Asks the connection idle the longest to close; false when none is idle.
    pub fn reclaim_idle(&self) -> bool {
        let conns = self.lock();
        let oldest = conns
            .values()
            .filter(|c| c.is_idle())
            .min_by_key(|c| c.idle_since.load(Ordering::SeqCst));
        match oldest {
            Some(c) if !c.reclaimed.swap(true, Ordering::SeqCst) => {
                c.reclaim.notify_one();
                true
            }
            _ => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        // A panic while holding this lock leaves a plain map behind; keep using it.
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A connection's place in the [`Registry`], given up on drop.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    id: u64,
    pub state: Arc<ConnState>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// The socket as hyper uses it: reads mark a request as arriving, and hyper's own empty-bodied
/// framing-error answers are replaced by JSON ones.
#[derive(Debug)]
pub struct ConnIo {
    stream: Shared,
    state: Arc<ConnState>,
    /// A replacement answer still being written, and how much of it is out.
    pending: Option<(Bytes, usize)>,
}

impl ConnIo {
    pub fn new(stream: Shared, state: Arc<ConnState>) -> Self {
        ConnIo {
            stream,
            state,
            pending: None,
        }
    }

    fn write_some(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *lock(&self.stream)).poll_write(cx, buf)
    }

    fn drain_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &self.pending {
            let n = ready!(self.write_some(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let done = *done + n;
            if done >= bytes.len() {
                self.pending = None;
            } else if let Some(p) = &mut self.pending {
                p.1 = done;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// If `buf` is the start of an answer hyper made by itself, our JSON answer instead.
    fn replacement(&self, buf: &[u8]) -> Option<Bytes> {
        if !self.state.head_pending() || !buf.starts_with(b"HTTP/1.") || buf.len() < 12 {
            return None;
        }
        let status: u16 = std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()?;
        self.state.framing_status.store(status, Ordering::SeqCst);
        Some(framing_answer(status))
    }
}

/// The JSON answer for a request hyper could not frame.
pub fn framing_answer(status: u16) -> Bytes {
    let (reason, message) = match status {
        408 => (
            "Request Timeout",
            "the request line and headers did not arrive within header_read_timeout".to_owned(),
        ),
        414 => ("URI Too Long", "request target too long".to_owned()),
        431 => (
            "Request Header Fields Too Large",
            format!(
                "request line and headers too large; the limit is {} KiB",
                MAX_HEAD_BYTES / 1024
            ),
        ),
        _ => (
            "Bad Request",
            "malformed HTTP request: the request line or a header (such as Content-Length or \
             Transfer-Encoding) could not be parsed"
                .to_owned(),
        ),
    };
    let body = serde_json::json!({ "error": message }).to_string();
    Bytes::from(format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// Writes `answer` on a stream hyper has let go of, within `limit`; errors are the client's
/// problem (it went away), so they are only logged.
pub async fn write_answer(stream: &Shared, answer: &[u8], limit: Duration) {
    let write = async {
        let mut done = 0;
        while done < answer.len() {
            let n = std::future::poll_fn(|cx| {
                Pin::new(&mut *lock(stream)).poll_write(cx, &answer[done..])
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += n;
        }
        std::future::poll_fn(|cx| Pin::new(&mut *lock(stream)).poll_shutdown(cx)).await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "could not write an answer"),
        Err(_) => tracing::debug!("client did not take an answer in time"),
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut *lock(&self.stream)).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.state.reading.store(true, Ordering::SeqCst);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain_pending(cx))?;
        if let Some(answer) = self.replacement(buf) {
            self.pending = Some((answer, 0));
            // The rest goes out from poll_flush if the socket is full now.
            if let Poll::Ready(Err(e)) = self.drain_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        self.write_some(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain_pending(cx))?;
        let first = bufs.iter().find(|b| !b.is_empty());
        if let Some(answer) = first.and_then(|b| self.replacement(b)) {
            self.pending = Some((answer, 0));
            if let Poll::Ready(Err(e)) = self.drain_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut *lock(&self.stream)).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        lock(&self.stream).is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain_pending(cx))?;
        Pin::new(&mut *lock(&self.stream)).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain_pending(cx))?;
        Pin::new(&mut *lock(&self.stream)).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_only_between_requests() {
        let registry = Arc::new(Registry::default());
        let reg = registry.register();
        let s = reg.state.clone();
        assert!(!s.is_idle(), "a fresh connection is not idle, only slow");
        s.reading.store(true, Ordering::SeqCst);
        assert!(!s.is_idle() && s.head_pending(), "bytes of a head arrived");
        let guard = s.begin_request();
        assert!(!s.is_idle() && !s.head_pending(), "request in progress");
        drop(guard);
        assert!(s.is_idle(), "response finished");
        assert!(registry.reclaim_idle(), "the idle connection is picked");
        assert!(!registry.reclaim_idle(), "and not picked twice");
        drop(reg);
        assert!(registry.lock().is_empty());
    }

    #[test]
    fn the_longest_idle_connection_is_reclaimed_first() {
        let registry = Arc::new(Registry::default());
        let a = registry.register();
        let b = registry.register();
        a.state.idle_since.store(50, Ordering::SeqCst);
        b.state.idle_since.store(10, Ordering::SeqCst);
        assert!(registry.reclaim_idle());
        assert!(b.state.reclaimed.load(Ordering::SeqCst));
        assert!(!a.state.reclaimed.load(Ordering::SeqCst));
    }

    #[test]
    fn framing_answers_are_complete_json_responses() {
        for status in [400u16, 408, 414, 431] {
            let answer = framing_answer(status);
            let text = std::str::from_utf8(&answer).expect("utf-8");
            let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
            assert!(head.contains(&format!("content-length: {}", body.len())));
            let v: serde_json::Value = serde_json::from_str(body).expect("json");
            assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
}
