//! Generation ids: looked up, or created atomically with the host's file index, and cached.

use super::*;

impl Inner {
    /// The id of a generation, creating it (and indexing its host and file) on first sight.
    pub(super) async fn resolve(
        &self,
        host: &str,
        file: &str,
        name: &str,
    ) -> Result<u64, StoreError> {
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

    pub(super) fn cache(&self) -> std::sync::MutexGuard<'_, IdCache> {
        self.ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
