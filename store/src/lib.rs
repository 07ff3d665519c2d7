//! Storage behind one trait, so the embedded sled store and a distributed backend are
//! interchangeable to the HTTP layer.
//!
//! Semantics every backend keeps (the prototype's): each (host, file, generation, line) is
//! its own last-write-wins cell, so any resend is idempotent; a write returns only once it
//! is durable.

mod bucket;
pub mod clock;
mod redis_store;
mod sled_store;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use logship_wire::FileBatch;

pub use bucket::distinct_buckets;
pub use redis_store::{RedisOptions, RedisStore};
pub use sled_store::{SledOptions, SledStore};

/// A boxed future, so the trait stays object safe (`Arc<dyn Store>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a store error came from (a sled, I/O or Redis error), kept whole rather than as its
/// text, so a caller can inspect it (is this a Redis answer or a lost connection?) and logs
/// print the whole chain.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed; callers map these to HTTP statuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend could not read or write (disk full, I/O error): retry later.
    #[error("store unavailable: {context}")]
    Unavailable {
        context: String,
        #[source]
        cause: Option<Cause>,
    },
    /// Stored bytes could not be decoded: a bug or corruption, never the client's fault.
    #[error("stored data is corrupt: {context}")]
    Corrupt {
        context: String,
        #[source]
        cause: Option<Cause>,
    },
}

impl StoreError {
    pub fn unavailable(context: impl Into<String>) -> Self {
        StoreError::Unavailable {
            context: context.into(),
            cause: None,
        }
    }

    /// Unavailable because of `cause`, which stays reachable through `source()`.
    pub fn unavailable_by(context: impl Into<String>, cause: impl Into<Cause>) -> Self {
        StoreError::Unavailable {
            context: context.into(),
            cause: Some(cause.into()),
        }
    }

    pub fn corrupt(context: impl Into<String>) -> Self {
        StoreError::Corrupt {
            context: context.into(),
            cause: None,
        }
    }

    pub fn corrupt_by(context: impl Into<String>, cause: impl Into<Cause>) -> Self {
        StoreError::Corrupt {
            context: context.into(),
            cause: Some(cause.into()),
        }
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. })
    }

    /// The context and every cause under it, without the kind: what an HTTP answer or a log
    /// line says.
    pub fn detail(&self) -> String {
        let (StoreError::Unavailable { context, .. } | StoreError::Corrupt { context, .. }) = self;
        let mut out = context.clone();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }

    /// The kind, the context and every cause, for logs and HTTP answers.
    pub fn report(&self) -> String {
        let kind = match self {
            StoreError::Unavailable { .. } => "store unavailable",
            StoreError::Corrupt { .. } => "stored data is corrupt",
        };
        format!("{kind}: {}", self.detail())
    }

    /// The cause of type `E` anywhere in the chain (e.g. the Redis answer a write got).
    pub fn cause<E: std::error::Error + 'static>(&self) -> Option<&E> {
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            if let Some(found) = e.downcast_ref::<E>() {
                return Some(found);
            }
            next = e.source();
        }
        None
    }
}

#[cfg(test)]
mod error_tests {
    use super::StoreError;

    #[test]
    fn a_store_error_keeps_its_cause_and_reports_the_whole_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left");
        let e = StoreError::unavailable_by("writing segment 7", io);
        assert!(e.is_unavailable() && !e.is_corrupt());
        assert_eq!(e.to_string(), "store unavailable: writing segment 7");
        assert_eq!(e.detail(), "writing segment 7: no space left");
        assert_eq!(
            e.report(),
            "store unavailable: writing segment 7: no space left"
        );
        let cause = e.cause::<std::io::Error>().map(std::io::Error::kind);
        assert_eq!(cause, Some(std::io::ErrorKind::StorageFull));
        assert!(StoreError::corrupt("bucket 3")
            .cause::<std::io::Error>()
            .is_none());
    }
}

/// What one write added.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// Lines received (including overwrites of lines already stored).
    pub lines: u64,
    /// Content bytes received.
    pub bytes: u64,
    /// Lines that were not stored before.
    pub new_lines: u64,
}

impl std::ops::AddAssign for WriteStats {
    /// Adds another write's counts (a request's file batches, a backend's pieces).
    fn add_assign(&mut self, s: WriteStats) {
        self.lines += s.lines;
        self.bytes += s.bytes;
        self.new_lines += s.new_lines;
    }
}

/// One generation of one file as listed by `/store/files`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationInfo {
    /// The agent's opaque generation id.
    pub name: String,
    /// Backend-internal numeric id; also the creation order, so generations sort oldest first.
    pub id: u64,
    /// Distinct lines stored.
    pub lines: u64,
    /// Highest line number stored.
    pub max_line: u64,
    /// The first line number still stored, when the backend knows it (sled): retention
    /// trims a live generation's oldest lines, and a generation may start past 0.
    pub first_line: Option<u64>,
    pub first_write: SystemTime,
    pub last_write: SystemTime,
}

/// A file and its generations, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub host: String,
    pub file: String,
    pub generations: Vec<GenerationInfo>,
}

/// A slice of a download: rendered bytes (each line followed by `\n` unless partial) and
/// where to continue.
#[derive(Debug, Default)]
pub struct Chunk {
    pub data: Vec<u8>,
    /// Line number to continue from, or `None` when the requested range is exhausted (or,
    /// in contiguous mode, a gap or partial line was reached).
    pub next: Option<u64>,
    /// The number after the last line rendered (`from` if none).
    pub end: u64,
    /// Where each rendered line starts in `data`, when asked for (`numbered`): what an
    /// out-of-band rendering (NDJSON with line numbers) needs, since `data` skips gaps.
    pub lines: Vec<LineRef>,
    /// Buckets skipped unread because they were received outside a search's time window.
    pub skipped: u64,
}

impl Chunk {
    /// Where rendered line `i` (of [`lines`](Chunk::lines)) ends in `data`, its `\n` left
    /// out.
    pub fn line_end(&self, i: usize) -> usize {
        let l = self.lines[i];
        let end = self.lines.get(i + 1).map_or(self.data.len(), |n| n.start);
        let end = if l.partial {
            end
        } else {
            end.saturating_sub(1)
        };
        end.max(l.start)
    }

    /// The bytes of rendered line `i` (of [`lines`](Chunk::lines)), without its `\n`.
    pub fn line(&self, i: usize) -> &[u8] {
        self.data
            .get(self.lines[i].start..self.line_end(i))
            .unwrap_or_default()
    }

    /// Whether line `n` may be rendered next (and notes where it starts when numbered): a
    /// follower must never skip a line that may still arrive, nor show a partial line it
    /// would have to show again.
    pub(crate) fn admit(
        &mut self,
        n: u64,
        partial: bool,
        ts: Option<u64>,
        contiguous: bool,
        numbered: bool,
    ) -> bool {
        if contiguous && (n != self.end || partial) {
            return false;
        }
        if numbered {
            self.lines.push(LineRef {
                number: n,
                start: self.data.len(),
                partial,
                ts,
            });
        }
        true
    }

    /// Ends line `n`'s rendering; whether the chunk is full (it stops inside a bucket too,
    /// so it holds at most `max_bytes` and one line).
    pub(crate) fn close_line(&mut self, n: u64, partial: bool, max_bytes: usize, to: u64) -> bool {
        if !partial {
            self.data.push(b'\n');
        }
        self.end = n + 1;
        if self.data.len() >= max_bytes && n < to {
            self.next = Some(n + 1);
            return true;
        }
        false
    }
}

/// What a read asks for; the backends' read loops share its checks.
pub(crate) struct Read {
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) max_bytes: usize,
    pub(crate) contiguous: bool,
    pub(crate) numbered: bool,
    /// A search's receive-time window, (since, until) in ms.
    pub(crate) window: Option<(u64, u64)>,
}

impl Read {
    /// A download's read of lines `from..=to`.
    pub(crate) fn download(
        from: u64,
        to: u64,
        max_bytes: usize,
        contiguous: bool,
        numbered: bool,
    ) -> Read {
        Read {
            from,
            to,
            max_bytes,
            contiguous,
            numbered,
            window: None,
        }
    }

    /// A search's read: numbered, not contiguous, within `window`.
    pub(crate) fn search(from: u64, to: u64, max_bytes: usize, window: Option<(u64, u64)>) -> Read {
        Read {
            from,
            to,
            max_bytes,
            contiguous: false,
            numbered: true,
            window,
        }
    }

    /// Whether a bucket received from `first` to `last` (ms) lies wholly outside a search's
    /// time window, and so is skipped unread.
    pub(crate) fn outside(&self, first: u64, last: u64) -> bool {
        self.window
            .is_some_and(|(since, until)| first > until || last < since)
    }

    /// After the bucket at `base`: whether the chunk is full, noting where to go on.
    pub(crate) fn full_after(&self, chunk: &mut Chunk, base: u64) -> bool {
        let next = base + bucket::LINES_PER_BUCKET;
        if chunk.data.len() >= self.max_bytes && next <= self.to {
            chunk.next = Some(if self.contiguous { chunk.end } else { next });
            return true;
        }
        false
    }
}

impl Chunk {
    /// Renders a decoded bucket's entries (first line number `base`) that `read` wants;
    /// whether the chunk is complete.
    pub(crate) fn push_bucket(
        &mut self,
        base: u64,
        entries: &[bucket::Entry<'_>],
        read: &Read,
    ) -> bool {
        for e in entries {
            let n = base + u64::from(e.offset);
            if n < read.from || n > read.to {
                continue;
            }
            if !self.admit(n, e.partial, e.ts, read.contiguous, read.numbered) {
                return true;
            }
            self.data.extend_from_slice(e.content);
            if self.close_line(n, e.partial, read.max_bytes, read.to) {
                return true;
            }
        }
        read.full_after(self, base)
    }
}

/// One rendered line of a [`Chunk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRef {
    pub number: u64,
    /// Offset of the line's first byte in `Chunk::data`.
    pub start: usize,
    /// A partial last line (no `\n` follows it in `data`).
    pub partial: bool,
    /// When it was received (ms since the epoch); `None` for lines stored before times.
    pub ts: Option<u64>,
}

/// One stored line inside a block a search scans: its number and where its content lies in
/// the block (the bytes between lines are the store's own, not `\n`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawLine {
    pub number: u64,
    pub start: usize,
    pub end: usize,
    pub partial: bool,
    /// When it was received (ms since the epoch); `None` for lines stored before times.
    pub ts: Option<u64>,
}

/// Visits the blocks of a scan; returns false to stop it. The visitor may take the block's
/// buffers (swapping in spare ones), so a block can be matched on another thread without a
/// copy; the store refills whatever buffers it is left with.
pub type Visitor<'a> = dyn FnMut(&mut Vec<u8>, &mut Vec<RawLine>) -> bool + 'a;

/// Called with (host, file) for a write made through another process sharing the store.
pub type OnWrite = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// The storage interface the aggregator serves from.
pub trait Store: Send + Sync + 'static {
    /// Stores every line of every batch, last write wins; resolves once durable.
    fn write<'a>(
        &'a self,
        batches: &'a [FileBatch<'a>],
    ) -> BoxFuture<'a, Result<WriteStats, StoreError>>;

    /// Up to `limit` hosts after `after`, in key order.
    fn hosts_page<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Up to `limit` files (of one host, if given) after `after` (host, file), in key
    /// order: by host, then file. Listings are served page by page so a store with many
    /// files never becomes one answer in memory.
    fn files_page<'a>(
        &'a self,
        host: Option<&'a str>,
        after: Option<(&'a str, &'a str)>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<FileInfo>, StoreError>>;

    /// All hosts (tools and tests; the HTTP layer pages).
    fn hosts(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        self.hosts_page(None, usize::MAX)
    }

    /// All files of one host, or of all (tools and tests; the HTTP layer pages).
    fn files<'a>(
        &'a self,
        host: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<FileInfo>, StoreError>> {
        self.files_page(host, None, usize::MAX)
    }

    /// The generations of one file, oldest first; empty if unknown.
    fn generations<'a>(
        &'a self,
        host: &'a str,
        file: &'a str,
    ) -> BoxFuture<'a, Result<Vec<GenerationInfo>, StoreError>>;

    /// Renders lines `from..=to` of generation `id`, stopping after about `max_bytes`.
    /// `contiguous` stops at the first missing or partial line (for followers); `numbered`
    /// fills [`Chunk::lines`].
    fn read_chunk(
        &self,
        id: u64,
        from: u64,
        to: u64,
        max_bytes: usize,
        contiguous: bool,
        numbered: bool,
    ) -> BoxFuture<'_, Result<Chunk, StoreError>>;

    /// For a search: numbered lines of generation `id` from `from` on, about `max_bytes`,
    /// skipping unread every bucket whose lines were received wholly outside `window`
    /// (`(since, until)` in ms since the epoch).
    fn search_chunk(
        &self,
        id: u64,
        from: u64,
        max_bytes: usize,
        window: Option<(u64, u64)>,
    ) -> BoxFuture<'_, Result<Chunk, StoreError>>;

    /// For a search, when the backend can do better than [`search_chunk`](Store::search_chunk):
    /// visits generation `id`'s lines in order as the bytes they are stored in, in large
    /// blocks (no copy per line), skipping buckets received outside `window`, and — given
    /// `must_contain`, bytes every line the search wants contains — stored blocks that its
    /// filter shows cannot hold it. Blocking: call it from a blocking thread. Returns the
    /// buckets skipped, or `None` when the backend has no such scan.
    fn scan_blocking(
        &self,
        _id: u64,
        _window: Option<(u64, u64)>,
        _must_contain: Option<&[u8]>,
        _visit: &mut Visitor<'_>,
    ) -> Option<Result<u64, StoreError>> {
        None
    }

    /// Bytes the store takes on disk, for metrics.
    fn size_on_disk(&self) -> u64;

    /// Whether the store is reachable and takes writes now (`/readyz`).
    fn ready(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    /// Makes everything written durable; called at shutdown.
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Enforces the retention policy and reclaims the space of dropped or superseded data.
    /// `now` is the retention clock's time ([`clock::RetentionClock`]), not the raw wall
    /// clock. Runs periodically; safe to run while writes and downloads go on: a generation
    /// written after it was found expired is kept.
    fn sweep(
        &self,
        policy: RetentionPolicy,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<SweepReport, StoreError>>;

    /// Calls `on_write(host, file)` for writes made through other processes sharing the
    /// store (the redis backend's pub/sub), so followers here wake for them too. Writes
    /// through this process are announced by the HTTP layer itself.
    fn watch_writes(&self, _on_write: OnWrite) {}

    /// Adds the backend's own metrics (e.g. where commit time goes) to the registry.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
}

/// What the periodic sweep enforces (`[store] retention`, `max_disk_bytes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Generations not written for this long are dropped.
    pub retention: Option<Duration>,
    /// Past this many bytes on disk the least recently written generations are dropped.
    pub max_disk_bytes: Option<u64>,
}

impl RetentionPolicy {
    /// What a sweep over `max_disk_bytes` drops down to: 90 % of it, so a store at its cap
    /// is not swept again at every write (both backends drop the least recently written
    /// generations until under this).
    pub fn disk_target(&self) -> Option<u64> {
        self.max_disk_bytes.map(|max| max / 10 * 9)
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub generations_dropped: u64,
    /// Lines removed from generations still written to (their oldest buckets, older than
    /// the retention).
    pub lines_trimmed: u64,
    pub segments_compacted: u64,
    /// Live bytes copied out of compacted segments.
    pub bytes_moved: u64,
    /// Disk bytes given back (segment sizes minus what was copied).
    pub bytes_reclaimed: u64,
}

/// The phases of a durable commit, as a histogram label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}
