//! The publisher task: publishes go to Redis in queue order, held while Redis is away.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{Client, RedisError, Value};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::sleep;

use super::scripts::PUBLISH_SCRIPT;
use super::wire::{self, RoomKeys};
use super::{Inner, Publish, connect, next_backoff, stopping};
use crate::log;

/// Publishes sent in one pipeline.
const MAX_BATCH: usize = 128;

/// Sends publishes to Redis in queue order, holding them while Redis is away.
pub(super) struct Publisher {
    inner: Arc<Inner>,
    client: Client,
    /// The SHA1 that EVALSHA names the publish script by.
    script_hash: String,
}

impl Publisher {
    pub(super) fn new(inner: Arc<Inner>, client: Client) -> Publisher {
        let script_hash = redis::Script::new(PUBLISH_SCRIPT).get_hash().to_string();
        Publisher {
            inner,
            client,
            script_hash,
        }
    }

    pub(super) async fn run(
        self,
        mut queue: mpsc::Receiver<Publish>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut connection: Option<MultiplexedConnection> = None;
        let mut batch: Vec<(u64, Publish)> = Vec::with_capacity(MAX_BATCH);
        let mut counter = 0u64;
        let mut backoff = Duration::ZERO;
        loop {
            if !backoff.is_zero() {
                // After a failure. Stopping does not cut this short: what is held still
                // goes out, until the caller's drain deadline.
                tokio::select! {
                    _ = stopping(&mut stopped), if batch.is_empty() && queue.is_empty() => return,
                    _ = sleep(backoff) => {}
                }
            }
            // Connected eagerly, not at the first publish: readiness waits for this.
            let Some(live) = connection.as_mut() else {
                match connect(&self.client).await {
                    Ok(fresh) => {
                        connection = Some(fresh);
                        self.inner.set_up(&self.inner.publisher_up, true);
                    }
                    Err(_) => {
                        self.inner.set_up(&self.inner.publisher_up, false);
                        backoff = next_backoff(backoff);
                    }
                }
                continue;
            };
            if batch.is_empty() {
                let first = tokio::select! {
                    biased;
                    first = queue.recv() => first,
                    _ = stopping(&mut stopped) => {
                        // Take nothing new, but send everything already queued.
                        queue.close();
                        queue.recv().await
                    }
                };
                let Some(first) = first else { return };
                counter += 1;
                batch.push((counter, first));
                while batch.len() < MAX_BATCH {
                    let Ok(next) = queue.try_recv() else { break };
                    counter += 1;
                    batch.push((counter, next));
                }
            }
            match self.send(live, &batch).await {
                Ok(()) => {
                    batch.clear();
                    backoff = Duration::ZERO;
                    let held = queue.max_capacity() - queue.capacity();
                    self.inner.metrics.publishes_held_now(held);
                }
                Err(error) if error.code() == Some("NOSCRIPT") => {
                    let mut load = redis::cmd("SCRIPT");
                    load.arg("LOAD").arg(PUBLISH_SCRIPT);
                    if load.query_async::<String>(live).await.is_err() {
                        connection = None;
                        backoff = next_backoff(backoff);
                    }
                }
                Err(error) if is_rejection(&error) => {
                    // Retrying cannot help, so these publishes are reported lost.
                    log::error(
                        "redis rejected publishes",
                        json!({ "error": error.to_string(), "dropped": batch.len() }),
                    );
                    for _ in 0..batch.len() {
                        self.inner.metrics.publish_refused();
                    }
                    batch.clear();
                }
                // Gone, stalled, still loading its data, out of memory: hold and retry the same
                // batch on a fresh connection; the instance counters make the retry exactly-once.
                Err(error) => {
                    log::warn(
                        "redis publish failed, holding",
                        json!({ "error": error.to_string(), "held": batch.len() + queue.len() }),
                    );
                    connection = None;
                    self.inner.set_up(&self.inner.publisher_up, false);
                    backoff = next_backoff(backoff);
                }
            }
        }
    }

    /// One pipeline of publish scripts, in queue order.
    async fn send(
        &self,
        connection: &mut MultiplexedConnection,
        batch: &[(u64, Publish)],
    ) -> Result<(), RedisError> {
        let mut pipeline = redis::pipe();
        for (number, publish) in batch {
            let keys = RoomKeys::of(&publish.room);
            pipeline
                .cmd("EVALSHA")
                .arg(&self.script_hash)
                .arg(4)
                .arg(keys.seq)
                .arg(keys.epoch)
                .arg(keys.log)
                .arg(keys.publishers)
                .arg(&publish.chat.prefix)
                .arg(&publish.chat.suffix)
                .arg(self.inner.fresh_epoch())
                .arg(self.inner.history)
                .arg(self.inner.room_ttl_secs)
                .arg(wire::channel(&publish.room))
                .arg(&self.inner.instance)
                .arg(*number);
        }
        pipeline
            .query_async::<Vec<Value>>(connection)
            .await
            .map(drop)
    }
}

/// Errors that retrying cannot fix: the script failed on this room's data.
fn is_rejection(error: &RedisError) -> bool {
    error.code() == Some("WRONGTYPE") || error.to_string().contains("user_script")
}
