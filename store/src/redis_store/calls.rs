//! Calls to Redis: each bounded by the store timeout, a transport failure resetting the
//! connection, every failure `Unavailable` (503), never a hang.

use super::*;

impl Inner {
    pub(super) fn opts(&self) -> &RedisOptions {
        self.conn.opts()
    }

    /// Runs `f` on the connection within the store timeout; a failure to reach Redis resets
    /// the connection and is `Unavailable` (503), never a hang.
    pub(super) async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
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
                Err(unavailable(what, e))
            }
            Err(_) => {
                self.conn.reset().await;
                Err(StoreError::unavailable(format!(
                    "redis: {what} took longer than {timeout:?}"
                )))
            }
        }
    }

    pub(super) async fn cmd<T: redis::FromRedisValue>(
        &self,
        what: &str,
        cmd: redis::Cmd,
    ) -> Result<T, StoreError> {
        self.call(what, |mut c| async move { cmd.query_async(&mut c).await })
            .await
    }
}

pub(super) fn unavailable(what: &str, e: RedisError) -> StoreError {
    StoreError::unavailable_by(format!("redis: {what}"), e)
}
