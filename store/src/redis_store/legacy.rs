//! Upgrade of a keyspace written before hosts with a `}` got escaped hash tags.
//!
//! The old layout put the raw host in the hash tag (`{h:<host>}`), so a host with a `}` had
//! keys that another host/file pair could share (issue 29.3). Hosts without one keep their
//! keys, so only hosts with a `}` have anything to move: once per keyspace (marked by
//! `<p>:layout`), each such host's old file index and generation maps are copied to the new
//! keys. A generation is copied only when its metadata names that host and file: an old key
//! that another pair shared may hold that pair's generations, which stay theirs. The old keys
//! are left alone: under the new layout the same name can be a brace-free host's live key.

use redis::Value;

use super::{Bound, Inner};
use crate::StoreError;

/// What the `<p>:layout` key holds once the copy is done.
const LAYOUT: &str = "2";
/// Hosts listed per `ZRANGEBYLEX` while looking for ones to copy.
const HOSTS_PER_PAGE: usize = 512;

impl Inner {
    /// Copies the old keys of hosts with a `}` to the new layout, once per keyspace; returns
    /// how many generations were copied.
    pub(super) async fn upgrade_layout(&self) -> Result<u64, StoreError> {
        let k = &self.keys;
        let done: Option<String> = self
            .cmd(
                "reading the key layout",
                redis::cmd("GET").arg(k.layout()).clone(),
            )
            .await?;
        if done.as_deref() == Some(LAYOUT) {
            return Ok(0);
        }
        let mut copied = 0;
        let mut after: Option<String> = None;
        loop {
            let start = after.as_deref().map_or(Bound::All, Bound::After);
            let hosts = self.range(k.hosts(), start, HOSTS_PER_PAGE).await?;
            let Some(last) = hosts.last().cloned() else {
                break;
            };
            for host in hosts.iter().filter(|h| h.contains('}')) {
                copied += self.copy_legacy_host(host).await?;
            }
            after = Some(last);
        }
        let _: () = self
            .cmd(
                "recording the key layout",
                redis::cmd("SET").arg(k.layout()).arg(LAYOUT).clone(),
            )
            .await?;
        if copied > 0 {
            tracing::info!(
                generations = copied,
                "copied hosts named with '}}' to escaped keys"
            );
        }
        Ok(copied)
    }

    async fn copy_legacy_host(&self, host: &str) -> Result<u64, StoreError> {
        let k = &self.keys;
        // Another pair's generation map can sit at this name: then it is no file index.
        let kind: String = self
            .cmd(
                "reading an old key's type",
                redis::cmd("TYPE").arg(k.legacy_files(host)).clone(),
            )
            .await?;
        if kind != "zset" {
            return Ok(0);
        }
        let mut copied = 0;
        let mut after: Option<String> = None;
        loop {
            let start = after.as_deref().map_or(Bound::All, Bound::After);
            let files = self
                .range(k.legacy_files(host), start, HOSTS_PER_PAGE)
                .await?;
            let Some(last) = files.last().cloned() else {
                break;
            };
            for file in &files {
                copied += self.copy_legacy_file(host, file).await?;
            }
            after = Some(last);
        }
        Ok(copied)
    }

    async fn copy_legacy_file(&self, host: &str, file: &str) -> Result<u64, StoreError> {
        let k = &self.keys;
        let old = k.legacy_gens(host, file);
        let kind: String = self
            .cmd(
                "reading an old key's type",
                redis::cmd("TYPE").arg(&old).clone(),
            )
            .await?;
        if kind != "hash" {
            return Ok(0);
        }
        let names: Vec<(String, Value)> = self
            .cmd(
                "reading an old generation map",
                redis::cmd("HGETALL").arg(&old).clone(),
            )
            .await?;
        let mut copied = 0;
        for (name, id) in names {
            let Ok(id) = redis::from_redis_value::<u64>(id) else {
                continue;
            };
            let mut c = redis::cmd("HMGET");
            c.arg(k.meta(id)).arg("host").arg("file");
            let owner: Vec<Option<String>> = self.cmd("reading a generation", c).await?;
            if owner.first().and_then(|h| h.as_deref()) != Some(host)
                || owner.get(1).and_then(|f| f.as_deref()) != Some(file)
            {
                continue;
            }
            let mut c = redis::cmd("HSETNX");
            c.arg(k.gens(host, file)).arg(&name).arg(id);
            let _: i64 = self.cmd("copying a generation", c).await?;
            let mut c = redis::cmd("ZADD");
            c.arg(k.files(host)).arg(0).arg(file);
            let _: i64 = self.cmd("copying a file", c).await?;
            copied += 1;
        }
        Ok(copied)
    }
}
