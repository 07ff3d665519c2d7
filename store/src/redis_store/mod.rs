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

/// How a write of one piece ended.
enum PieceError {
    /// The generation was dropped by retention: start a new one.
    Gone,
    Store(StoreError),
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

fn now_ms() -> u64 {
    crate::clock::millis(SystemTime::now())
}

fn to_time(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

impl Inner {
    fn opts(&self) -> &RedisOptions {
        self.conn.opts()
    }

    /// Runs `f` on the connection within the store timeout; a failure to reach Redis resets
    /// the connection and is `Unavailable` (503), never a hang.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let conn = self.conn.get().await?;
        let timeout = self.opts().timeout + self.opts().wait_timeout;
        match tokio::time::timeout(timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if !is_server_answer(&e) {
                    self.conn.reset().await;
                }
                Err(unavailable(what, &e))
            }
            Err(_) => {
                self.conn.reset().await;
                Err(StoreError::Unavailable(format!(
                    "redis: {what} took longer than {timeout:?}"
                )))
            }
        }
    }

    async fn cmd<T: redis::FromRedisValue>(
        &self,
        what: &str,
        cmd: redis::Cmd,
    ) -> Result<T, StoreError> {
        self.call(what, |mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// The id of a generation, creating it (and indexing its host and file) on first sight.
    async fn resolve(&self, host: &str, file: &str, name: &str) -> Result<u64, StoreError> {
        let cache_key = (host.to_owned(), file.to_owned(), name.to_owned());
        if let Some((id, _)) = self.cache().get(&cache_key) {
            return Ok(*id);
        }
        let k = &self.keys;
        let existing: Option<u64> = self
            .cmd(
                "looking up a generation",
                redis::cmd("HGET").arg(k.gens(host, file)).arg(name).clone(),
            )
            .await?;
        let id = match existing {
            Some(id) => id,
            None => {
                let new: u64 = self
                    .cmd(
                        "allocating a generation id",
                        redis::cmd("INCR").arg(k.next_id()).clone(),
                    )
                    .await?;
                let now = now_ms();
                let mut hset = redis::cmd("HSET");
                hset.arg(k.meta(new))
                    .arg("state")
                    .arg("live")
                    .arg("host")
                    .arg(host)
                    .arg("file")
                    .arg(file)
                    .arg("name")
                    .arg(name)
                    .arg("lines")
                    .arg(0)
                    .arg("bytes")
                    .arg(0)
                    .arg("max_line")
                    .arg("")
                    .arg("first")
                    .arg(now)
                    .arg("last")
                    .arg(now);
                let () = self.cmd("creating a generation", hset).await?;
                let create = self.host_script(scripts::CREATE, host, file, name, new);
                let winner: u64 = self.cmd("indexing a generation", create).await?;
                if winner != new {
                    // Another aggregator created it first; ours was never used.
                    let _: Result<i64, _> = self
                        .cmd(
                            "discarding a generation",
                            redis::cmd("DEL").arg(k.meta(new)).clone(),
                        )
                        .await;
                } else {
                    self.score(new, now, false).await?;
                }
                winner
            }
        };
        // Always (not only on creation): a crash between creating and listing is repaired
        // by the next aggregator that writes to the generation.
        self.list_host(host).await?;
        let mut cache = self.cache();
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(cache_key, (id, Instant::now()));
        Ok(id)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, IdCache> {
        self.ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes one file's lines; retried in a new generation if retention dropped the old
    /// one in between.
    async fn write_file(&self, fb: &FileBatch<'_>) -> Result<WriteStats, StoreError> {
        let mut stats = WriteStats::default();
        if fb.lines.is_empty() {
            return Ok(stats);
        }
        let grouped = bucket::group(&fb.lines);
        stats.lines = grouped.lines;
        stats.bytes = grouped.bytes;
        let max_line = grouped.max_line;
        let mut pieces: Vec<Vec<(u64, usize, Vec<u8>)>> = vec![Vec::new()];
        let mut piece_bytes = 0;
        for (b, entries) in grouped.buckets {
            let blob = keys::encode_entries(&entries);
            let last = pieces
                .last_mut()
                .filter(|p| p.len() < SCRIPT_BUCKETS && piece_bytes + blob.len() <= SCRIPT_BYTES);
            let piece = match last {
                Some(p) => p,
                None => {
                    piece_bytes = 0;
                    pieces.push(Vec::new());
                    pieces.last_mut().expect("just pushed")
                }
            };
            piece_bytes += blob.len();
            piece.push((b, entries.len(), blob));
        }
        for attempt in 0..5u32 {
            let id = self.resolve(&fb.host, &fb.file, &fb.generation).await?;
            let results = futures_util::future::join_all(
                pieces
                    .iter()
                    .filter(|p| !p.is_empty())
                    .map(|p| self.write_piece(id, &fb.host, &fb.file, max_line, p)),
            )
            .await;
            let mut added = 0;
            let mut gone = false;
            for r in results {
                match r {
                    Ok(n) => added += n,
                    Err(PieceError::Gone) => gone = true,
                    Err(PieceError::Store(e)) => return Err(e),
                }
            }
            if !gone {
                stats.new_lines = added;
                self.touch(id, &fb.host, &fb.file, &fb.generation).await;
                return Ok(stats);
            }
            // Retention marked the generation dropped: finish unlisting it (the sweep would),
            // so the next resolve creates a fresh one.
            self.cache().remove(&(
                fb.host.to_string(),
                fb.file.to_string(),
                fb.generation.to_string(),
            ));
            let _ = self.unindex(id, &fb.host, &fb.file, &fb.generation).await;
            tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt + 1))).await;
        }
        Err(StoreError::Unavailable(
            "generation keeps being dropped by retention while written; retry".into(),
        ))
    }

    /// One write script (and `WAIT`, in the same pipeline so it follows the write on the
    /// same connection to the same primary).
    async fn write_piece(
        &self,
        id: u64,
        host: &str,
        file: &str,
        max_line: u64,
        piece: &[(u64, usize, Vec<u8>)],
    ) -> Result<u64, PieceError> {
        let k = &self.keys;
        // EVALSHA first (the script is sent once per node), EVAL when a node lacks it.
        let build = |by_body: bool| {
            let mut c = if by_body {
                let mut c = redis::cmd("EVAL");
                c.arg(scripts::WRITE);
                c
            } else {
                let mut c = redis::cmd("EVALSHA");
                c.arg(self.write.get_hash());
                c
            };
            c.arg(piece.len() + 1).arg(k.meta(id));
            for (b, _, _) in piece {
                c.arg(k.bucket(id, *b));
            }
            c.arg(now_ms())
                .arg(max_line.to_string())
                .arg(k.channel())
                .arg(keys::written_message(host, file));
            for (_, count, blob) in piece {
                c.arg(*count).arg(&blob[..]);
            }
            c
        };
        let wait = self.opts().wait_replicas;
        let wait_ms = self.opts().wait_timeout.as_millis() as u64;
        let run = |mut c: Conn, by_body: bool| {
            let mut pipe = redis::pipe();
            pipe.add_command(build(by_body));
            if wait > 0 {
                pipe.cmd("WAIT").arg(wait).arg(wait_ms);
            }
            async move { pipe.query_async::<Vec<Value>>(&mut c).await }
        };
        let mut result = self.call("writing lines", |c| run(c, false)).await;
        if let Err(StoreError::Unavailable(msg)) = &result {
            if msg.to_ascii_lowercase().contains("noscript") {
                // A node that has not seen the script yet (new, or just promoted).
                result = self.call("writing lines", |c| run(c, true)).await;
            }
        }
        let values = match result {
            Ok(v) => v,
            Err(StoreError::Unavailable(msg))
                if msg.contains("NOGEN") || msg.contains("generation is gone") =>
            {
                return Err(PieceError::Gone)
            }
            Err(e) => return Err(PieceError::Store(e)),
        };
        let added = match values.first() {
            Some(Value::Int(n)) => *n as u64,
            other => {
                return Err(PieceError::Store(StoreError::Unavailable(format!(
                    "redis: unexpected write answer {other:?}"
                ))))
            }
        };
        if wait > 0 {
            let got = match values.get(1) {
                Some(Value::Int(n)) => *n,
                _ => 0,
            };
            if got < i64::from(wait) {
                return Err(PieceError::Store(StoreError::Unavailable(format!(
                    "redis: the write reached {got} of the {wait} replicas required \
                     (store.wait_replicas) within {wait_ms} ms; not acknowledged"
                ))));
            }
        }
        Ok(added)
    }

    /// Refreshes a written generation's retention score, at most once a second per process.
    async fn touch(&self, id: u64, host: &str, file: &str, name: &str) {
        let key = (host.to_owned(), file.to_owned(), name.to_owned());
        let due = match self.cache().get_mut(&key) {
            Some((_, at)) if at.elapsed() >= TOUCH_EVERY => {
                *at = Instant::now();
                true
            }
            _ => false,
        };
        if due {
            // The score is only a hint: the drop re-checks the generation's own last write.
            let _ = self.score(id, now_ms(), true).await;
        }
    }

    async fn generations(&self, host: &str, file: &str) -> Result<Vec<GenerationInfo>, StoreError> {
        let names: Vec<(String, u64)> = self
            .cmd(
                "listing generations",
                redis::cmd("HGETALL")
                    .arg(self.keys.gens(host, file))
                    .clone(),
            )
            .await?;
        let metas = try_join_all(names.into_iter().map(|(name, id)| async move {
            let mut c = redis::cmd("HMGET");
            c.arg(self.keys.meta(id))
                .arg("state")
                .arg("lines")
                .arg("max_line")
                .arg("first")
                .arg("last");
            let v: Vec<Option<String>> = self.cmd("reading a generation", c).await?;
            Ok::<_, StoreError>((name, id, v))
        }))
        .await?;
        let mut out = Vec::new();
        for (name, id, v) in metas {
            if v.first().and_then(|s| s.as_deref()) != Some("live") {
                continue;
            }
            let n = |i: usize| {
                v.get(i)
                    .and_then(|s| s.as_deref())
                    .and_then(|s| s.parse::<u64>().ok())
            };
            let Some(max_line) = n(2) else {
                // Created, not yet written.
                continue;
            };
            out.push(GenerationInfo {
                name,
                id,
                lines: n(1).unwrap_or(0),
                max_line,
                first_write: to_time(n(3).unwrap_or(0)),
                last_write: to_time(n(4).unwrap_or(0)),
            });
        }
        out.sort_by_key(|g| g.id);
        Ok(out)
    }

    /// Up to `limit` names of a lexically ordered set after `after` (exclusive) or from
    /// `from` (inclusive).
    async fn range(
        &self,
        key: String,
        start: Bound<'_>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let min = match start {
            Bound::All => "-".to_owned(),
            Bound::After(a) => format!("({a}"),
            Bound::From(a) => format!("[{a}"),
        };
        let count = i64::try_from(limit).unwrap_or(-1);
        let mut c = redis::cmd("ZRANGEBYLEX");
        c.arg(key).arg(min).arg("+").arg("LIMIT").arg(0).arg(count);
        self.cmd("listing", c).await
    }

    async fn files(
        &self,
        host: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<FileInfo>, StoreError> {
        let mut out = Vec::new();
        let mut host_start = match (host, after) {
            (Some(h), _) => Some(h.to_owned()),
            (None, Some((h, _))) => self
                .range(self.keys.hosts(), Bound::From(h), 1)
                .await?
                .into_iter()
                .next(),
            (None, None) => self
                .range(self.keys.hosts(), Bound::All, 1)
                .await?
                .into_iter()
                .next(),
        };
        while let Some(h) = host_start.take() {
            let mut file_after = match after {
                Some((ah, af)) if ah == h => Some(af.to_owned()),
                _ => None,
            };
            // A file whose generations are all being created or dropped is not listed; the
            // page is filled from the files after it, so a short page still means the end.
            while out.len() < limit {
                let start = file_after.as_deref().map_or(Bound::All, Bound::After);
                let files = self
                    .range(self.keys.files(&h), start, limit - out.len())
                    .await?;
                let Some(last) = files.last().cloned() else {
                    break;
                };
                let infos = try_join_all(files.into_iter().map(|f| {
                    let h = h.clone();
                    async move {
                        let generations = self.generations(&h, &f).await?;
                        Ok::<_, StoreError>(FileInfo {
                            host: h,
                            file: f,
                            generations,
                        })
                    }
                }))
                .await?;
                out.extend(infos.into_iter().filter(|f| !f.generations.is_empty()));
                file_after = Some(last);
            }
            if out.len() >= limit || host.is_some() {
                break;
            }
            host_start = self
                .range(self.keys.hosts(), Bound::After(&h), 1)
                .await?
                .into_iter()
                .next();
        }
        Ok(out)
    }

    async fn read_chunk(&self, id: u64, mut read: Read) -> Result<Chunk, StoreError> {
        let (from, max_bytes) = (read.from, read.max_bytes);
        let mut chunk = Chunk {
            end: from,
            ..Chunk::default()
        };
        let max_line: Option<String> = self
            .cmd(
                "reading a generation",
                redis::cmd("HGET")
                    .arg(self.keys.meta(id))
                    .arg("max_line")
                    .clone(),
            )
            .await?;
        let Some(max_line) = max_line.and_then(|m| m.parse::<u64>().ok()) else {
            return Ok(chunk);
        };
        read.to = read.to.min(max_line);
        if from > read.to {
            return Ok(chunk);
        }
        let range = buckets_of(from, read.to);
        let (mut b, last) = (*range.start(), *range.end());
        // A few buckets per round trip at first, more while they keep coming back small.
        let mut group = 2u64;
        while b <= last {
            let n = group.min(last - b + 1);
            // Sizes first, so a big bucket is never fetched whole and a group stays small.
            let mut pipe = redis::pipe();
            for x in b..b + n {
                pipe.cmd("STRLEN").arg(self.keys.bucket(id, x));
            }
            let sizes: Vec<u64> = self
                .call("reading lines", |mut c| async move {
                    pipe.query_async(&mut c).await
                })
                .await?;
            let (mut take, mut total) = (0u64, 0u64);
            for &size in &sizes {
                if take > 0 && (size > BIG_BUCKET || total + size > GROUP_BYTES) {
                    break;
                }
                take += 1;
                total += size;
            }
            let take = take.max(1);
            if sizes.first().is_some_and(|&s| s > BIG_BUCKET) {
                let key = self.keys.bucket(id, b);
                if self
                    .read_big_bucket(&key, sizes[0], b * LINES_PER_BUCKET, &read, &mut chunk)
                    .await?
                {
                    return Ok(chunk);
                }
            } else {
                let mut mget = redis::cmd("MGET");
                for x in b..b + take {
                    mget.arg(self.keys.bucket(id, x));
                }
                let values: Vec<Option<Vec<u8>>> = self.cmd("reading lines", mget).await?;
                for (i, v) in values.iter().enumerate() {
                    let base = (b + i as u64) * LINES_PER_BUCKET;
                    let Some(v) = v else { continue };
                    let what = format!("bucket at line {base} of generation {id}");
                    let bucket = keys::decode_bucket(v, &what)?;
                    if read.outside(bucket.first_ms, bucket.last_ms) {
                        chunk.skipped += 1;
                        continue;
                    }
                    if chunk.push_bucket(base, &bucket.entries, &read) {
                        return Ok(chunk);
                    }
                }
            }
            b += take;
            let avg = (chunk.data.len() as u64 / (b - range.start()).max(1)).max(1);
            let room = (max_bytes.saturating_sub(chunk.data.len()) as u64 / avg).max(1);
            group = (group * 2).min(32).min(room);
        }
        Ok(chunk)
    }

    /// Reads a bucket too big to fetch whole through `GETRANGE` windows of [`BIG_BUCKET`]
    /// bytes, so a download or search holds at most a window and one line of it. Returns
    /// whether the chunk is complete.
    async fn read_big_bucket(
        &self,
        key: &str,
        size: u64,
        base: u64,
        read: &Read,
        chunk: &mut Chunk,
    ) -> Result<bool, StoreError> {
        let mut r = RangeReader {
            key,
            size,
            pos: 0,
            buf: Vec::new(),
            at: 0,
        };
        let mut head = Vec::new();
        r.read_into(self, &mut head, keys::HEADER as u64).await?;
        let (first_ms, last_ms) = keys::header_times(&head)
            .ok_or_else(|| StoreError::Corrupt(format!("{key}: bad bucket header")))?;
        if read.outside(first_ms, last_ms) {
            chunk.skipped += 1;
            return Ok(false);
        }
        while r.remaining() > 0 {
            let offset = r.byte(self).await?;
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let b = r.byte(self).await?;
                v |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    break;
                }
            }
            let (len, partial) = (v >> 1, v & 1 == 1);
            let n = base + u64::from(offset);
            if n < read.from || n > read.to {
                r.skip(len);
                continue;
            }
            if !chunk.admit(n, partial, read.contiguous, read.numbered) {
                return Ok(true);
            }
            r.read_into(self, &mut chunk.data, len).await?;
            if chunk.close_line(n, partial, read.max_bytes, read.to) {
                return Ok(true);
            }
        }
        Ok(read.full_after(chunk, base))
    }

    /// Removes a generation being dropped from its host's index (and the host from the host
    /// list when it was its last file).
    async fn unindex(&self, id: u64, host: &str, file: &str, name: &str) -> Result<(), StoreError> {
        let k = &self.keys;
        let c = self.host_script(scripts::UNINDEX, host, file, name, id);
        let remaining: i64 = self.cmd("unlisting a generation", c).await?;
        if remaining == 0 {
            let _: i64 = self
                .cmd(
                    "unlisting a host",
                    redis::cmd("ZREM").arg(k.hosts()).arg(host).clone(),
                )
                .await?;
            // A file created for the host meanwhile put it back first, or will after.
            let now: i64 = self
                .cmd(
                    "checking a host",
                    redis::cmd("ZCARD").arg(k.files(host)).clone(),
                )
                .await?;
            if now > 0 {
                self.list_host(host).await?;
            }
        }
        Ok(())
    }

    /// A script on a host's index (`CREATE`, `UNINDEX`): KEYS gens, files; ARGV name, id,
    /// file.
    fn host_script(&self, script: &str, host: &str, file: &str, name: &str, id: u64) -> redis::Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(script)
            .arg(2)
            .arg(self.keys.gens(host, file))
            .arg(self.keys.files(host))
            .arg(name)
            .arg(id)
            .arg(file);
        c
    }

    /// Lists a host (idempotent).
    async fn list_host(&self, host: &str) -> Result<(), StoreError> {
        let mut c = redis::cmd("ZADD");
        c.arg(self.keys.hosts()).arg(0).arg(host);
        let _: i64 = self.cmd("listing a host", c).await?;
        Ok(())
    }

    /// Sets generation `id`'s retention score to `ms` (only upwards when `raise`).
    async fn score(&self, id: u64, ms: u64, raise: bool) -> Result<(), StoreError> {
        let mut c = redis::cmd("ZADD");
        c.arg(self.keys.by_last());
        if raise {
            c.arg("GT");
        }
        c.arg(ms).arg(id);
        let _: i64 = self.cmd("scoring a generation for retention", c).await?;
        Ok(())
    }

    /// Drops generation `id` unless it was written at or after `cutoff` (ms; `None` drops
    /// it regardless, for the memory budget).
    async fn drop_generation(&self, id: u64, cutoff: Option<u64>) -> Result<Dropped, StoreError> {
        let k = &self.keys;
        let mut mark = redis::cmd("EVAL");
        mark.arg(scripts::MARK_DROP)
            .arg(1)
            .arg(k.meta(id))
            .arg(cutoff.map(|c| c.to_string()).unwrap_or_default());
        let answer: Option<Vec<String>> = self.cmd("marking a generation dropped", mark).await?;
        let Some(answer) = answer else {
            let _: i64 = self
                .cmd(
                    "unscoring a generation",
                    redis::cmd("ZREM").arg(k.by_last()).arg(id).clone(),
                )
                .await?;
            return Ok(Dropped::Gone);
        };
        match answer.first().map(String::as_str) {
            Some("keep") => {
                let last = answer
                    .get(1)
                    .and_then(|l| l.parse::<u64>().ok())
                    .unwrap_or(0);
                self.score(id, last, false).await?;
                Ok(Dropped::Kept)
            }
            Some("drop") if answer.len() == 5 => {
                let (host, file, name) = (&answer[1], &answer[2], &answer[3]);
                self.cache().retain(|_, (i, _)| *i != id);
                self.unindex(id, host, file, name).await?;
                if let Ok(max) = answer[4].parse::<u64>() {
                    let last = max / LINES_PER_BUCKET;
                    let mut b = 0;
                    while b <= last {
                        let mut unlink = redis::cmd("UNLINK");
                        for x in b..=last.min(b + UNLINK_BATCH - 1) {
                            unlink.arg(k.bucket(id, x));
                        }
                        let _: i64 = self.cmd("deleting lines", unlink).await?;
                        b += UNLINK_BATCH;
                    }
                }
                let _: i64 = self
                    .cmd(
                        "deleting a generation",
                        redis::cmd("UNLINK").arg(k.meta(id)).clone(),
                    )
                    .await?;
                let _: i64 = self
                    .cmd(
                        "unscoring a generation",
                        redis::cmd("ZREM").arg(k.by_last()).arg(id).clone(),
                    )
                    .await?;
                tracing::info!(%host, %file, generation = %name, id, "dropped a generation");
                Ok(Dropped::Yes)
            }
            _ => Err(StoreError::Corrupt(format!(
                "generation {id}: unexpected drop answer {answer:?}"
            ))),
        }
    }

    /// Memory the primaries use, summed (`INFO memory` on each).
    async fn used_memory(&self) -> Result<u64, StoreError> {
        let value: Value = self
            .call("measuring memory", |mut c| async move {
                let mut info = redis::cmd("INFO");
                info.arg("memory");
                match &mut c {
                    Conn::Cluster(cc) => {
                        use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
                        cc.route_command(
                            info,
                            RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                        )
                        .await
                    }
                    Conn::Single(_) => c.req_packed_command(&info).await,
                }
            })
            .await?;
        let mut total = 0;
        sum_used_memory(&value, &mut total);
        self.used_memory.store(total, Ordering::Relaxed);
        Ok(total)
    }

    async fn sweep(&self, policy: RetentionPolicy, now: u64) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        let k = &self.keys;
        // The first sweep that reaches Redis brings an older keyspace up to date.
        if !self.layout_current.load(Ordering::SeqCst) {
            self.upgrade_layout().await?;
            self.layout_current.store(true, Ordering::SeqCst);
        }
        if let Some(retention) = policy.retention {
            let cutoff = now.saturating_sub(retention.as_millis() as u64);
            for _ in 0..1_000 {
                let mut c = redis::cmd("ZRANGEBYSCORE");
                c.arg(k.by_last())
                    .arg("-inf")
                    .arg(format!("({cutoff}"))
                    .arg("LIMIT")
                    .arg(0)
                    .arg(128);
                let ids: Vec<u64> = self.cmd("finding expired generations", c).await?;
                if ids.is_empty() {
                    break;
                }
                for id in ids {
                    if let Dropped::Yes = self.drop_generation(id, Some(cutoff)).await? {
                        report.generations_dropped += 1;
                    }
                }
            }
        }
        if let Some(max) = policy.max_disk_bytes {
            let target = max / 10 * 9;
            for _ in 0..1_000 {
                let used = self.used_memory().await?;
                if used <= target {
                    break;
                }
                let ids: Vec<u64> = self
                    .cmd(
                        "finding the oldest generations",
                        redis::cmd("ZRANGE").arg(k.by_last()).arg(0).arg(7).clone(),
                    )
                    .await?;
                if ids.is_empty() {
                    break;
                }
                for id in ids {
                    if let Dropped::Yes = self.drop_generation(id, None).await? {
                        report.generations_dropped += 1;
                    }
                }
            }
        }
        let _ = self.used_memory().await;
        Ok(report)
    }

    /// Wakes `on_write` for every write published by any aggregator, resubscribing (to the
    /// next seed node) whenever the subscription breaks.
    async fn watch(self: Arc<Self>, on_write: crate::OnWrite) {
        let nodes = self.opts().nodes.clone();
        let channel = self.keys.channel();
        for url in nodes.iter().cycle() {
            let subscribe = async {
                let client = redis::Client::open(self.conn.info(url)?)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                let mut pubsub = client
                    .get_async_pubsub()
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                pubsub
                    .subscribe(&channel)
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                Ok::<_, StoreError>(pubsub)
            };
            let subscribed = tokio::time::timeout(self.opts().timeout, subscribe)
                .await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("subscribe timed out".into())));
            match subscribed {
                Ok(pubsub) => {
                    tracing::info!(node = %url, "redis: following writes");
                    let mut stream = pubsub.into_on_message();
                    while let Some(msg) = stream.next().await {
                        if let Some((host, file)) = keys::parse_written(msg.get_payload_bytes()) {
                            on_write(&host, &file);
                        }
                    }
                    tracing::warn!(node = %url, "redis: write subscription ended; resubscribing");
                }
                Err(e) => {
                    tracing::debug!(node = %url, error = %e, "redis: cannot subscribe to writes yet");
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A bucket larger than this is read in windows of this size, never whole.
const BIG_BUCKET: u64 = 1 << 20;
/// Bucket bytes fetched per `MGET`, at most.
const GROUP_BYTES: u64 = 4 << 20;

/// Reads one string value piecewise with `GETRANGE`.
struct RangeReader<'a> {
    key: &'a str,
    size: u64,
    /// Value offset of `buf[0]`'s successor window: where the next fetch starts.
    pos: u64,
    buf: Vec<u8>,
    /// Next unread byte in `buf`.
    at: usize,
}

impl RangeReader<'_> {
    fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.pos) + (self.buf.len() - self.at) as u64
    }

    async fn fill(&mut self, inner: &Inner) -> Result<(), StoreError> {
        if self.pos >= self.size {
            return Err(StoreError::Corrupt(format!(
                "{}: bucket ends inside an entry",
                self.key
            )));
        }
        let end = (self.pos + BIG_BUCKET).min(self.size) - 1;
        let mut c = redis::cmd("GETRANGE");
        c.arg(self.key).arg(self.pos).arg(end);
        self.buf = inner.cmd("reading lines", c).await?;
        if self.buf.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "{}: bucket changed while read",
                self.key
            )));
        }
        self.pos += self.buf.len() as u64;
        self.at = 0;
        Ok(())
    }

    async fn byte(&mut self, inner: &Inner) -> Result<u8, StoreError> {
        if self.at == self.buf.len() {
            self.fill(inner).await?;
        }
        let b = self.buf[self.at];
        self.at += 1;
        Ok(b)
    }

    async fn read_into(
        &mut self,
        inner: &Inner,
        out: &mut Vec<u8>,
        mut len: u64,
    ) -> Result<(), StoreError> {
        while len > 0 {
            if self.at == self.buf.len() {
                self.fill(inner).await?;
            }
            let take = (self.buf.len() - self.at).min(len as usize);
            out.extend_from_slice(&self.buf[self.at..self.at + take]);
            self.at += take;
            len -= take as u64;
        }
        Ok(())
    }

    fn skip(&mut self, len: u64) {
        let in_buf = ((self.buf.len() - self.at) as u64).min(len);
        self.at += in_buf as usize;
        self.pos += len - in_buf;
    }
}

/// Where a listing starts.
enum Bound<'a> {
    All,
    After(&'a str),
    From(&'a str),
}

enum Dropped {
    Yes,
    Kept,
    Gone,
}

fn unavailable(what: &str, e: &RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {what}: {e}"))
}

/// Adds up every `used_memory:` line in an `INFO memory` answer (one per primary).
fn sum_used_memory(v: &Value, total: &mut u64) {
    match v {
        Value::BulkString(b) => sum_in_text(&String::from_utf8_lossy(b), total),
        Value::SimpleString(s) => sum_in_text(s, total),
        Value::VerbatimString { text, .. } => sum_in_text(text, total),
        Value::Array(items) | Value::Set(items) => {
            items.iter().for_each(|i| sum_used_memory(i, total));
        }
        Value::Map(pairs) => pairs.iter().for_each(|(_, i)| sum_used_memory(i, total)),
        _ => {}
    }
}

fn sum_in_text(text: &str, total: &mut u64) {
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("used_memory:") {
            *total += n.trim().parse::<u64>().unwrap_or(0);
        }
    }
}

impl Store for RedisStore {
    fn write<'a>(
        &'a self,
        batches: &'a [FileBatch<'a>],
    ) -> BoxFuture<'a, Result<WriteStats, StoreError>> {
        Box::pin(async move {
            let write = try_join_all(batches.iter().map(|fb| self.inner.write_file(fb)));
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
                stats.lines += s.lines;
                stats.bytes += s.bytes;
                stats.new_lines += s.new_lines;
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
