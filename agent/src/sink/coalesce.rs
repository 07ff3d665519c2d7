//! Joining batches of many files into one request (the multi-file form, `LSB2`).
//!
//! Each file's sender still delivers its own batches, in order, with its own retries and
//! checkpoint; what changes is the request a batch rides in. A batch is queued here; the
//! first of the waiting senders to get a request slot (`limits.max_in_flight`) takes every
//! batch queued up to `sink.max_request_bytes` and sends them as one request, then hands
//! each sender its own section's answer. So with slots free a batch goes at once, and
//! when requests are all in flight (a busy host, a slow aggregator) the batches that wait
//! go out together: the fewer requests, the busier the host. A small batch (a quiet file's
//! `linger`, a small agent's few lines) waits [`GATHER`] for others first.
//!
//! Memory: a queued batch is the body its sender already holds (shared, not copied), so the
//! buffer budget counts it as before; the request is compressed from the pieces, never
//! concatenated uncompressed (`sink.compression = "none"` is the exception: one copy).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Semaphore};

use super::Outcome;

/// How long a request of small batches waits for more before it goes.
pub const GATHER: Duration = Duration::from_millis(2);

/// The smallest request cap a 413 can bring it down to.
const MIN_CAP: usize = 64 * 1024;

/// The most batches in one request: half the aggregator's default
/// `limits.max_files_per_request` (1,000), so a request of many tiny batches is not refused
/// as too many files.
const MAX_SECTIONS: usize = 500;

/// What a queued batch is told: its own outcome, or `None` to be sent again (the request
/// was too large as a whole, or the aggregator turned out to take one file per request).
pub type Answer = Option<Outcome>;

/// A batch waiting for a request.
#[derive(Debug)]
pub struct Member {
    pub body: Arc<Vec<u8>>,
    tx: oneshot::Sender<Answer>,
}

impl Member {
    /// Tells the batch's sender how it went (a sender gone meanwhile has nothing to learn).
    pub fn answer(self, a: Answer) {
        let _ = self.tx.send(a);
    }
}

#[derive(Debug, Default)]
struct Queue {
    members: VecDeque<Member>,
    bytes: usize,
}

/// The batches waiting to be joined.
#[derive(Debug)]
pub struct Joiner {
    queue: Mutex<Queue>,
    cap: AtomicUsize,
}

impl Joiner {
    pub fn new(max_request_bytes: usize) -> Self {
        Joiner {
            queue: Mutex::default(),
            cap: AtomicUsize::new(max_request_bytes.max(1)),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a batch; its answer comes on the receiver.
    pub fn enqueue(&self, body: Arc<Vec<u8>>) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        let mut q = self.queue();
        q.bytes += body.len();
        q.members.push_back(Member { body, tx });
        rx
    }

    /// Whether what waits is small enough that waiting [`GATHER`] for more is worth it.
    pub fn small(&self) -> bool {
        self.queue().bytes < self.cap.load(Ordering::Relaxed) / 2
    }

    /// Takes the oldest batches, up to the request cap and [`MAX_SECTIONS`] (always at
    /// least one).
    pub fn take(&self) -> Vec<Member> {
        let cap = self.cap.load(Ordering::Relaxed);
        let mut q = self.queue();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(m) = q.members.front() {
            if !out.is_empty() && (bytes + m.body.len() > cap || out.len() >= MAX_SECTIONS) {
                break;
            }
            bytes += m.body.len();
            if let Some(m) = q.members.pop_front() {
                out.push(m);
            }
        }
        q.bytes -= bytes;
        out
    }

    /// A joined request was too large for the aggregator: join less from now on.
    pub fn shrink(&self) {
        let cap = self.cap.load(Ordering::Relaxed);
        self.cap.store((cap / 2).max(MIN_CAP), Ordering::Relaxed);
    }
}

/// One section's answer in an aggregator's acknowledgement of a joined request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SectionAck {
    pub stored: Option<u64>,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// The per-section answers of `{"stored":N,"new":M,"sections":[…]}`.
pub fn section_acks(answer: &[u8]) -> Option<Vec<SectionAck>> {
    #[derive(serde::Deserialize)]
    struct Ack {
        sections: Vec<SectionAck>,
    }
    serde_json::from_slice::<Ack>(answer)
        .ok()
        .map(|a| a.sections)
}

/// What one section's answer means for its batch of `lines` lines, as a whole answer with
/// that status would (see `aggregator::classify`).
pub fn section_outcome(ack: &SectionAck, lines: Option<u32>, endpoint: &str) -> Outcome {
    match (ack.stored, ack.status) {
        (Some(n), _) if Some(n) == lines.map(u64::from) => Outcome::Ok,
        (_, Some(status)) => {
            let reason = format!(
                "{status}: {}",
                ack.error.as_deref().unwrap_or("refused without a reason")
            );
            match status {
                408 | 429 | 500..=599 => Outcome::Retry {
                    reason,
                    after: None,
                },
                413 => Outcome::TooLarge,
                400 | 422 => Outcome::Reject { reason },
                _ => Outcome::Park {
                    endpoint: endpoint.to_owned(),
                    reason,
                },
            }
        }
        _ => Outcome::Park {
            endpoint: endpoint.to_owned(),
            reason: format!("the acknowledgement names other lines than the batch's ({ack:?})"),
        },
    }
}

/// Compresses `pieces` as one zstd frame that declares its size (the aggregator then takes
/// its memory at once and decompresses in one call), with this thread's reused context.
pub fn zstd_pieces(pieces: &[&[u8]], level: i32) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective as EndDirective;
    use zstd::zstd_safe::{self, CParameter, InBuffer, OutBuffer, ResetDirective};
    thread_local! {
        static CCTX: std::cell::RefCell<Option<zstd_safe::CCtx<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let fail = |code: usize| std::io::Error::other(zstd_safe::get_error_name(code));
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    CCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        let cctx = slot.get_or_insert_with(zstd_safe::CCtx::create);
        cctx.reset(ResetDirective::SessionAndParameters)
            .map_err(fail)?;
        cctx.set_parameter(CParameter::CompressionLevel(level))
            .map_err(fail)?;
        cctx.set_pledged_src_size(Some(total as u64))
            .map_err(fail)?;
        let mut out: Vec<u8> = Vec::with_capacity(zstd_safe::compress_bound(total));
        let last = pieces.len().saturating_sub(1);
        for (i, piece) in pieces.iter().enumerate() {
            let mut input = InBuffer::around(piece);
            let end = if i == last {
                EndDirective::ZSTD_e_end
            } else {
                EndDirective::ZSTD_e_continue
            };
            loop {
                if out.len() == out.capacity() {
                    out.reserve(64 * 1024);
                }
                let pos = out.len();
                // Writing sets the vector's length to what was written.
                let left = cctx
                    .compress_stream2(&mut OutBuffer::around_pos(&mut out, pos), &mut input, end)
                    .map_err(fail)?;
                let consumed = input.pos() == piece.len();
                if consumed && (i != last || left == 0) {
                    break;
                }
            }
        }
        if pieces.is_empty() {
            let mut input = InBuffer::around(&[]);
            let pos = out.len();
            let mut output = OutBuffer::around_pos(&mut out, pos);
            cctx.compress_stream2(&mut output, &mut input, EndDirective::ZSTD_e_end)
                .map_err(fail)?;
        }
        Ok(out)
    })
}

/// The joining side of the aggregator sink: queueing a batch, leading a request, and
/// answering each batch from its section.
impl super::aggregator::AggregatorSink {
    /// Delivers one batch in a request joined with other files' batches (see the module
    /// doc); `in_flight` bounds the requests, not the batches.
    pub(super) async fn joined(
        &self,
        body: &Arc<Vec<u8>>,
        read_at_ms: u64,
        in_flight: &Arc<Semaphore>,
    ) -> Outcome {
        let mut rx = self.joiner.enqueue(body.clone());
        let mut lead = true;
        loop {
            let permit = tokio::select! {
                biased;
                answer = &mut rx => match answer {
                    Ok(Some(outcome)) => return outcome,
                    Ok(None) if self.may_take_multi() => {
                        rx = self.joiner.enqueue(body.clone());
                        lead = true;
                        continue;
                    }
                    Ok(None) => {
                        let _permit = in_flight.acquire().await;
                        return self.attempt(body, read_at_ms).await;
                    }
                    Err(_) => {
                        return Outcome::Retry {
                            reason: "the request carrying the batch was abandoned".into(),
                            after: None,
                        }
                    }
                },
                permit = in_flight.clone().acquire_owned(), if lead => permit,
            };
            if self.joiner.small() {
                tokio::time::sleep(GATHER).await;
            }
            let members = self.joiner.take();
            if members.is_empty() {
                // Another sender took this batch along: wait for its answer.
                lead = false;
            } else {
                self.send_joined(members).await;
            }
            drop(permit);
        }
    }

    /// Sends `members` as one multi-file request and answers each.
    async fn send_joined(&self, members: Vec<Member>) {
        let Some((host, _)) = logship_wire::multi::section(&members[0].body) else {
            for m in members {
                m.answer(Some(Outcome::Reject {
                    reason: "not a multi-file batch".into(),
                }));
            }
            return;
        };
        let header = logship_wire::multi::header(host);
        let mut pieces: Vec<&[u8]> = Vec::with_capacity(members.len() + 1);
        pieces.push(&header);
        for m in &members {
            match logship_wire::multi::section(&m.body) {
                Some((h, s)) if h == host => pieces.push(s),
                // Batches of another host (never from one agent): a request of their own.
                _ => {}
            }
        }
        if pieces.len() != members.len() + 1 {
            for m in members {
                m.answer(None);
            }
            return;
        }
        let acks: Mutex<Option<Vec<SectionAck>>> = Mutex::new(None);
        let ack = |answer: &[u8]| {
            match section_acks(answer) {
            Some(a) if a.len() == members.len() => {
                *acks.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(a);
                Ok(())
            }
            _ => Err("without an answer for each file of the request; is the URL an aggregator's /store/batch?".into()),
        }
        };
        let encoded = self.encode(&pieces);
        let sent = self
            .send_encoded(encoded, logship_wire::COMPACT_CONTENT_TYPE, true, &ack)
            .await;
        let acks = acks
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.metrics.joined_requests.inc();
        self.metrics.joined_batches.inc_by(members.len() as u64);
        match sent {
            Some(Outcome::Ok) => {
                let endpoint = self.endpoints.first().map_or("", |e| e.label.as_str());
                for (m, a) in members.into_iter().zip(acks.unwrap_or_default()) {
                    let lines = logship_wire::line_count_file(&m.body);
                    let outcome = section_outcome(&a, lines, endpoint);
                    m.answer(Some(outcome));
                }
            }
            Some(Outcome::TooLarge) if members.len() > 1 => {
                self.joiner.shrink();
                for m in members {
                    m.answer(None);
                }
            }
            Some(other) => {
                for m in members {
                    m.answer(Some(other.clone()));
                }
            }
            // The endpoint takes one file per request: each batch goes again on its own.
            None => {
                for m in members {
                    m.answer(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_compress_to_one_frame_that_declares_its_size() {
        let a = b"LSB2\x01h".to_vec();
        let b: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let c = b"tail".to_vec();
        let z = zstd_pieces(&[&a, &b, &c], 1).expect("compress");
        let whole: Vec<u8> = [a, b, c].concat();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&z).ok().flatten(),
            Some(whole.len() as u64)
        );
        assert_eq!(zstd::decode_all(&z[..]).expect("decompress"), whole);
        // The thread's context is reused: a second request comes out the same.
        let again = zstd_pieces(&[&whole], 1).expect("compress");
        assert_eq!(zstd::decode_all(&again[..]).expect("decompress"), whole);
    }

    #[test]
    fn take_keeps_order_and_the_cap_but_always_takes_one() {
        let j = Joiner::new(250);
        let _rx: Vec<_> = [100usize, 100, 100, 400]
            .iter()
            .map(|&n| j.enqueue(Arc::new(vec![0; n])))
            .collect();
        let sizes = |ms: Vec<Member>| ms.iter().map(|m| m.body.len()).collect::<Vec<_>>();
        assert_eq!(sizes(j.take()), [100, 100]);
        assert_eq!(sizes(j.take()), [100]);
        assert_eq!(sizes(j.take()), [400], "larger than the cap: alone");
        assert!(j.take().is_empty());
        assert!(j.small());
        // Many tiny batches: at most MAX_SECTIONS a request.
        let j = Joiner::new(1 << 20);
        let _rx: Vec<_> = (0..600).map(|_| j.enqueue(Arc::new(vec![0; 10]))).collect();
        assert_eq!(j.take().len(), MAX_SECTIONS);
        assert_eq!(j.take().len(), 100);
    }

    #[test]
    fn a_section_answer_maps_as_a_whole_answer_would() {
        let ack = |stored: Option<u64>, status: Option<u16>| SectionAck {
            stored,
            status,
            error: Some("why".into()),
        };
        assert_eq!(
            section_outcome(&ack(Some(3), None), Some(3), "e"),
            Outcome::Ok
        );
        assert!(matches!(
            section_outcome(&ack(Some(2), None), Some(3), "e"),
            Outcome::Park { .. }
        ));
        assert_eq!(
            section_outcome(&ack(None, Some(413)), Some(3), "e"),
            Outcome::TooLarge
        );
        assert!(matches!(
            section_outcome(&ack(None, Some(400)), Some(3), "e"),
            Outcome::Reject { .. }
        ));
        assert!(matches!(
            section_outcome(&ack(None, Some(503)), Some(3), "e"),
            Outcome::Retry { .. }
        ));
        let parsed = section_acks(
            br#"{"stored":3,"new":3,"sections":[{"stored":3},{"status":400,"error":"bad"}]}"#,
        )
        .expect("parses");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].status, Some(400));
        assert!(section_acks(br#"{"stored":3,"new":3}"#).is_none());
    }
}
