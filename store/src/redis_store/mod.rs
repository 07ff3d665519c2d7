//! The redis backend: the same cells as sled (128-line buckets, last write wins per line),
//! kept in a Redis Cluster (or one Redis server) so several stateless aggregators share one
//! store. Layout in [`keys`], scripts in [`scripts`].
//!
//! Durability: a write is acknowledged after its script ran on the slot's primary — which,
//! run with `appendonly yes` and `appendfsync always`, has written it to its AOF and fsynced
//! before answering — and, when `wait_replicas ≥ 1`, after `WAIT` saw that many replicas
//! take it. A failover can still lose what the promoted replica had not received; with
//! `wait_replicas = 1` that is nothing acknowledged, as long as a replica that had the write
//! is the one promoted.

mod conn;
mod keys;
mod legacy;
mod scripts;

mod calls;
mod ids;
mod listing;
mod read;
mod sweep;
mod watch;
mod write;

use listing::Bound;

pub use conn::RedisOptions;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::try_join_all;
use futures_util::StreamExt;
use logship_wire::FileBatch;
use redis::aio::ConnectionLike;
use redis::{RedisError, RedisResult, Value};

use crate::bucket::{self, LINES_PER_BUCKET};
use conn::{is_server_answer, Conn, Connector};
use keys::{buckets_of, Keys};

use crate::{
    BoxFuture, Chunk, FileInfo, GenerationInfo, Read, RetentionPolicy, Store, StoreError,
    SweepReport, WriteStats,
};

/// Buckets per write script: bounds how long one script holds its node.
const SCRIPT_BUCKETS: usize = 64;
/// Content bytes per write script.
const SCRIPT_BYTES: usize = 4 << 20;
/// Bucket keys per `UNLINK` when a generation is dropped.
const UNLINK_BATCH: u64 = 512;
/// How often a generation's retention score is refreshed while it is written.
const TOUCH_EVERY: Duration = Duration::from_secs(1);
/// Generation ids remembered per process before the cache starts over.
const CACHE_ENTRIES: usize = 100_000;

/// (host, file, generation) → id and when its retention score was last refreshed.
type IdCache = HashMap<(String, String, String), (u64, Instant)>;

/// A Redis (Cluster) store.
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Arc<Connector>,
    keys: Keys,
    write: redis::Script,
    /// (host, file, generation) → id and when its retention score was last refreshed.
    ids: std::sync::Mutex<IdCache>,
    /// Memory the primaries reported at the last sweep (`INFO memory`).
    used_memory: AtomicU64,
    /// The keyspace's layout is current ([`Inner::upgrade_layout`] ran to its end).
    layout_current: std::sync::atomic::AtomicBool,
}

impl RedisStore {
    /// A store over `opts.nodes`; connects on first use, so the aggregator starts (and
    /// answers 503) while Redis is still down.
    pub fn new(opts: RedisOptions) -> Self {
        let keys = Keys::new(&opts.key_prefix);
        RedisStore {
            inner: Arc::new(Inner {
                conn: Connector::new(opts),
                keys,
                write: redis::Script::new(scripts::WRITE),
                ids: std::sync::Mutex::new(HashMap::new()),
                used_memory: AtomicU64::new(0),
                layout_current: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Connects now, for a startup check; an error says which nodes failed.
    pub async fn check(&self) -> Result<(), StoreError> {
        self.inner.conn.get().await.map(|_| ())
    }
}

use crate::clock::{now_ms, to_time};

/// The batches of a request grouped by generation, each group in request order.
fn same_generation<'b, 'a>(batches: &'b [FileBatch<'a>]) -> Vec<Vec<&'b FileBatch<'a>>> {
    let mut groups: Vec<Vec<&FileBatch<'a>>> = Vec::new();
    let mut index: std::collections::HashMap<(&str, &str, &str), usize> = Default::default();
    for fb in batches {
        let key = (&*fb.host, &*fb.file, &*fb.generation);
        match index.get(&key) {
            Some(&i) => groups[i].push(fb),
            None => {
                index.insert(key, groups.len());
                groups.push(vec![fb]);
            }
        }
    }
    groups
}

impl Store for RedisStore {
    fn write<'a>(
        &'a self,
        batches: &'a [FileBatch<'a>],
    ) -> BoxFuture<'a, Result<WriteStats, StoreError>> {
        Box::pin(async move {
            // Files are written concurrently, but batches of one generation in request order:
            // a request naming a line twice keeps its last write, as on sled.
            let write = try_join_all(same_generation(batches).into_iter().map(
                |group| async move {
                    let mut stats = WriteStats::default();
                    for fb in group {
                        stats += self.inner.write_file(fb).await?;
                    }
                    Ok::<_, StoreError>(stats)
                },
            ));
            // Encoding a large request's buckets and packing them into commands copies
            // every byte twice: off the runtime worker, as sled's large writes are.
            let size: usize = batches
                .iter()
                .flat_map(|b| &b.lines)
                .map(|l| l.content.len())
                .sum();
            let all = if size > logship_common::offload::INLINE_BYTES {
                let handle = tokio::runtime::Handle::current();
                logship_common::offload::offload(|| handle.block_on(write))?
            } else {
                write.await?
            };
            let mut stats = WriteStats::default();
            for s in all {
                stats += s;
            }
            Ok(stats)
        })
    }

    fn hosts_page<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let start = after.map_or(Bound::All, Bound::After);
            self.inner
                .range(self.inner.keys.hosts(), start, limit)
                .await
        })
    }

    fn files_page<'a>(
        &'a self,
        host: Option<&'a str>,
        after: Option<(&'a str, &'a str)>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<FileInfo>, StoreError>> {
        Box::pin(self.inner.files(host, after, limit))
    }

    fn generations<'a>(
        &'a self,
        host: &'a str,
        file: &'a str,
    ) -> BoxFuture<'a, Result<Vec<GenerationInfo>, StoreError>> {
        Box::pin(self.inner.generations(host, file))
    }

    fn read_chunk(
        &self,
        id: u64,
        from: u64,
        to: u64,
        max_bytes: usize,
        contiguous: bool,
        numbered: bool,
    ) -> BoxFuture<'_, Result<Chunk, StoreError>> {
        Box::pin(self.inner.read_chunk(
            id,
            Read::download(from, to, max_bytes, contiguous, numbered),
        ))
    }

    fn search_chunk(
        &self,
        id: u64,
        from: u64,
        max_bytes: usize,
        window: Option<(u64, u64)>,
    ) -> BoxFuture<'_, Result<Chunk, StoreError>> {
        Box::pin(
            self.inner
                .read_chunk(id, Read::search(from, u64::MAX >> 16, max_bytes, window)),
        )
    }

    /// Memory the primaries used at the last sweep (the redis analogue of disk).
    fn size_on_disk(&self) -> u64 {
        self.inner.used_memory.load(Ordering::Relaxed)
    }

    /// Writes a probe key: a primary for its slot is up and takes writes.
    fn ready(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut c = redis::cmd("SET");
            c.arg(self.inner.keys.ready()).arg(now_ms());
            let () = self.inner.cmd("writing the readiness probe", c).await?;
            Ok(())
        })
    }

    /// Every acknowledged write is already durable.
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn sweep(
        &self,
        policy: RetentionPolicy,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<SweepReport, StoreError>> {
        Box::pin(self.inner.sweep(policy, crate::clock::millis(now)))
    }

    fn watch_writes(&self, on_write: crate::OnWrite) {
        tokio::spawn(self.inner.clone().watch(on_write));
    }
}
