//! Followers across processes: the write channel subscribed to, re-made when it breaks.

use super::*;

impl Inner {
    /// Wakes `on_write` for every write published by any aggregator, resubscribing (to the
    /// next seed node) whenever the subscription breaks.
    pub(super) async fn watch(self: Arc<Self>, on_write: crate::OnWrite) {
        let nodes = self.opts().nodes.clone();
        let channel = self.keys.channel();
        for url in nodes.iter().cycle() {
            let subscribe = async {
                let client = redis::Client::open(self.conn.info(url)?)
                    .map_err(|e| StoreError::unavailable_by(format!("redis {url}"), e))?;
                let mut pubsub = client.get_async_pubsub().await.map_err(|e| {
                    StoreError::unavailable_by(format!("redis {url}: connecting to subscribe"), e)
                })?;
                pubsub.subscribe(&channel).await.map_err(|e| {
                    StoreError::unavailable_by(format!("redis {url}: subscribing"), e)
                })?;
                Ok::<_, StoreError>(pubsub)
            };
            let subscribed = tokio::time::timeout(self.opts().timeout, subscribe)
                .await
                .unwrap_or_else(|_| Err(StoreError::unavailable("subscribe timed out")));
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
