//! Response bodies: small in-memory ones, and a streamed one fed by a bounded channel so a
//! download of any size holds at most a few chunks in memory.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use tokio::sync::mpsc;

/// The one response body type the routes return.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A body holding `data` whole.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The producing end of a [`streamed`] body.
#[derive(Debug)]
pub struct StreamSender {
    tx: mpsc::Sender<Bytes>,
    complete: Arc<AtomicBool>,
}

impl StreamSender {
    /// Sends a chunk; `false` once the client has gone.
    pub async fn send(&self, data: Bytes) -> bool {
        self.tx.send(data).await.is_ok()
    }

    /// Sends a chunk unless the client has not taken the earlier ones within `wait`: the
    /// stall guard of downloads, listings and searches (a client that stops reading is let
    /// go rather than holding its stream, and what it costs, for good).
    pub async fn send_within(&self, data: Bytes, wait: std::time::Duration) -> Sent {
        match self.tx.send_timeout(data, wait).await {
            Ok(()) => Sent::Taken,
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Sent::Stalled,
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Sent::Gone,
        }
    }

    /// The underlying sender, for `send_timeout` and the like.
    pub fn sender(&self) -> &mpsc::Sender<Bytes> {
        &self.tx
    }

    /// Marks the body complete: dropping the sender now ends the response normally.
    /// Dropped without this, the response is aborted, so a client never mistakes a cut-off
    /// download for a whole file.
    pub fn finish(self) {
        self.complete.store(true, Ordering::SeqCst);
    }
}

/// How [`StreamSender::send_within`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Taken,
    /// The client took nothing for the whole wait.
    Stalled,
    /// The client went away.
    Gone,
}

/// A body streamed from a task; `capacity` chunks are buffered at most.
pub fn streamed(capacity: usize) -> (StreamSender, Body) {
    let (tx, rx) = mpsc::channel(capacity);
    let complete = Arc::new(AtomicBool::new(false));
    let body = ChannelBody {
        rx,
        complete: complete.clone(),
    };
    (StreamSender { tx, complete }, body.boxed())
}

struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    complete: Arc<AtomicBool>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(None) if self.complete.load(Ordering::SeqCst) => Poll::Ready(None),
            Poll::Ready(None) => Poll::Ready(Some(Err(std::io::Error::other("download aborted")))),
            Poll::Pending => Poll::Pending,
        }
    }
}
