//! Connections to Redis: a cluster (the redis crate's cluster-async client) or one plain
//! server, found out from the first seed that answers; rebuilt after failures, every call
//! bounded by a timeout, so an unreachable Redis is a prompt `Unavailable`, never a hang.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use crate::StoreError;

/// Where and how to reach Redis (`[store] type = "redis"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// Seed nodes, `redis://host:port`.
    pub nodes: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Replicas that must have a write before it is acknowledged (`WAIT`); 0 = the primary.
    pub wait_replicas: u32,
    /// How long `WAIT` may take before the write counts as failed (the agent retries it).
    pub wait_timeout: Duration,
    /// Bound on every store call (connect, command, script).
    pub timeout: Duration,
    /// Prefix of every key, so several deployments can share a cluster.
    pub key_prefix: String,
}

/// A cluster or single-server connection; both multiplex many requests over one socket
/// per node.
#[derive(Clone)]
pub(super) enum Conn {
    Cluster(ClusterConnection),
    Single(MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Single(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        0
    }
}

/// Hands out the current connection, making one when there is none.
pub(super) struct Connector {
    opts: RedisOptions,
    current: tokio::sync::Mutex<Option<(Conn, Instant)>>,
    /// The last failure to connect, answered again for [`RETRY_CONNECT`] so a burst of
    /// requests while Redis is down gets prompt 503s instead of queueing for a connect each.
    failed: std::sync::Mutex<Option<(Instant, String)>>,
}

/// How long a failure to connect is answered from memory before trying again.
const RETRY_CONNECT: Duration = Duration::from_millis(500);

impl Connector {
    pub(super) fn new(opts: RedisOptions) -> Arc<Self> {
        Arc::new(Connector {
            opts,
            current: tokio::sync::Mutex::new(None),
            failed: std::sync::Mutex::new(None),
        })
    }

    pub(super) fn opts(&self) -> &RedisOptions {
        &self.opts
    }

    /// The connection, made (within the timeout) if needed.
    pub(super) async fn get(&self) -> Result<Conn, StoreError> {
        let recent_failure = || {
            self.failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .filter(|(at, _)| at.elapsed() < RETRY_CONNECT)
                .map(|(_, msg)| StoreError::unavailable(msg.clone()))
        };
        if let Some(e) = recent_failure() {
            return Err(e);
        }
        let mut cur = self.current.lock().await;
        if let Some((c, _)) = &*cur {
            return Ok(c.clone());
        }
        // Another request may have just failed to connect while this one waited.
        if let Some(e) = recent_failure() {
            return Err(e);
        }
        let made = tokio::time::timeout(self.opts.timeout, self.connect())
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::unavailable(format!(
                    "redis: no node of {:?} answered within {:?}",
                    self.opts.nodes, self.opts.timeout
                )))
            });
        match made {
            Ok(conn) => {
                *cur = Some((conn.clone(), Instant::now()));
                Ok(conn)
            }
            Err(e) => {
                *self
                    .failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((Instant::now(), unavailable_message(&e)));
                Err(e)
            }
        }
    }

    /// Drops the connection after a failure that may mean it is broken (not after a
    /// server's answer), so the next call connects afresh. A connection younger than a
    /// second is kept, so a burst of failures does not become a burst of reconnects.
    pub(super) async fn reset(&self) {
        let mut cur = self.current.lock().await;
        if matches!(&*cur, Some((_, made)) if made.elapsed() > Duration::from_secs(1)) {
            *cur = None;
        }
    }

    pub(super) fn info(&self, url: &str) -> Result<redis::ConnectionInfo, StoreError> {
        let info = url
            .into_connection_info()
            .map_err(|e| StoreError::unavailable_by(format!("redis: bad node URL {url:?}"), e))?;
        let mut rs = info.redis_settings().clone();
        if let Some(u) = &self.opts.username {
            rs = rs.set_username(u);
        }
        if let Some(p) = &self.opts.password {
            rs = rs.set_password(p);
        }
        Ok(info.set_redis_settings(rs))
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let mut last = String::from("no nodes configured");
        for url in &self.opts.nodes {
            let client = redis::Client::open(self.info(url)?)
                .map_err(|e| StoreError::unavailable_by(format!("redis {url}"), e))?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.opts.timeout))
                .set_response_timeout(Some(self.opts.timeout + self.opts.wait_timeout));
            let mut probe = match client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{url}: {e}");
                    continue;
                }
            };
            let info: String = match redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut probe)
                .await
            {
                Ok(i) => i,
                Err(e) => {
                    last = format!("{url}: {e}");
                    continue;
                }
            };
            if !info.contains("cluster_enabled:1") {
                tracing::info!(node = %url, "redis: connected to a single server");
                return Ok(Conn::Single(probe));
            }
            let infos = self
                .opts
                .nodes
                .iter()
                .map(|u| self.info(u))
                .collect::<Result<Vec<_>, _>>()?;
            let client = redis::cluster::ClusterClientBuilder::new(infos)
                .connection_timeout(self.opts.timeout)
                .response_timeout(self.opts.timeout + self.opts.wait_timeout)
                .retries(3)
                .min_retry_wait(50)
                .max_retry_wait(500)
                .build()
                .map_err(|e| StoreError::unavailable_by("redis cluster", e))?;
            match client.get_async_connection().await {
                Ok(c) => {
                    tracing::info!(nodes = ?self.opts.nodes, "redis: connected to the cluster");
                    return Ok(Conn::Cluster(c));
                }
                Err(e) => last = format!("cluster via {url}: {e}"),
            }
        }
        Err(StoreError::unavailable(format!(
            "redis unreachable: {last}"
        )))
    }
}

fn unavailable_message(e: &StoreError) -> String {
    e.detail()
}

/// Whether an error is the server's answer (the connection is fine) rather than a failure
/// to reach it.
pub(super) fn is_server_answer(e: &redis::RedisError) -> bool {
    !(e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_cluster_error()
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound)
}
