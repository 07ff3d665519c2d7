//! Retention: expired and over-cap generations marked, unlisted and unlinked, and the
//! primaries' memory summed.

use super::*;

impl Inner {
    /// Removes a generation being dropped from its host's index (and the host from the host
    /// list when it was its last file).
    pub(super) async fn unindex(
        &self,
        id: u64,
        host: &str,
        file: &str,
        name: &str,
    ) -> Result<(), StoreError> {
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
    pub(super) fn host_script(
        &self,
        script: &str,
        host: &str,
        file: &str,
        name: &str,
        id: u64,
    ) -> redis::Cmd {
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
    pub(super) async fn list_host(&self, host: &str) -> Result<(), StoreError> {
        let mut c = redis::cmd("ZADD");
        c.arg(self.keys.hosts()).arg(0).arg(host);
        let _: i64 = self.cmd("listing a host", c).await?;
        Ok(())
    }

    /// Sets generation `id`'s retention score to `ms` (only upwards when `raise`).
    pub(super) async fn score(&self, id: u64, ms: u64, raise: bool) -> Result<(), StoreError> {
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
    pub(super) async fn drop_generation(
        &self,
        id: u64,
        cutoff: Option<u64>,
    ) -> Result<Dropped, StoreError> {
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
            _ => Err(StoreError::corrupt(format!(
                "generation {id}: unexpected drop answer {answer:?}"
            ))),
        }
    }

    /// Trims generation `id`, still written to: removes its oldest buckets whose lines are
    /// all older than `cutoff` (ms), up to the first younger one and never its last bucket
    /// (see [`scripts::TRIM`]); returns the lines removed.
    pub(super) async fn trim_generation(&self, id: u64, cutoff: u64) -> Result<u64, StoreError> {
        let k = &self.keys;
        let v: Vec<Option<u64>> = self
            .cmd(
                "reading a generation to trim",
                redis::cmd("HMGET")
                    .arg(k.meta(id))
                    .arg("trim")
                    .arg("max_line")
                    .arg("first")
                    .clone(),
            )
            .await?;
        let (from, Some(max), Some(first)) = (
            v.first().copied().flatten().unwrap_or(0),
            v.get(1).copied().flatten(),
            v.get(2).copied().flatten(),
        ) else {
            return Ok(0);
        };
        if first >= cutoff {
            return Ok(0);
        }
        let last = max / LINES_PER_BUCKET;
        let mut b = from;
        let mut removed = 0u64;
        while b < last {
            let end = last.min(b + UNLINK_BATCH);
            let mut c = redis::cmd("EVAL");
            c.arg(scripts::TRIM).arg(1 + (end - b)).arg(k.meta(id));
            for x in b..end {
                c.arg(k.bucket(id, x));
            }
            c.arg(cutoff).arg(b);
            let answer: Option<(u64, u64, u64)> = self.cmd("trimming a generation", c).await?;
            let Some((lines, next, stopped)) = answer else {
                break;
            };
            removed += lines;
            b = next;
            if stopped == 1 {
                break;
            }
        }
        Ok(removed)
    }

    /// Memory the primaries use, summed (`INFO memory` on each).
    pub(super) async fn used_memory(&self) -> Result<u64, StoreError> {
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

    pub(super) async fn sweep(
        &self,
        policy: RetentionPolicy,
        now: u64,
    ) -> Result<SweepReport, StoreError> {
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
            // Generations still written to lose their buckets older than the retention.
            let mut from = format!("{cutoff}");
            loop {
                let mut c = redis::cmd("ZRANGEBYSCORE");
                c.arg(k.by_last())
                    .arg(&from)
                    .arg("+inf")
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(128);
                let page: Vec<(u64, u64)> = self.cmd("finding live generations", c).await?;
                for (id, _) in &page {
                    report.lines_trimmed += self.trim_generation(*id, cutoff).await?;
                }
                match page.last() {
                    // Scores are last-write times: go on after the last one seen (ties at
                    // that score were in this page or are trimmed next sweep).
                    Some((_, score)) if page.len() == 128 => from = format!("({score}"),
                    _ => break,
                }
            }
        }
        if let Some(target) = policy.disk_target() {
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
}

pub(super) enum Dropped {
    Yes,
    Kept,
    Gone,
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
