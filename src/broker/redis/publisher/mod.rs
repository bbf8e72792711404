//! The publisher task: held publishes go to Redis in pipelines, rooms in turn.
//!
//! What Redis answers decides what happens to each publish:
//! - applied (or recognised as already applied): done;
//! - an error reply that may pass (OOM, BUSY, LOADING, READONLY, …): retried with backoff
//!   for [`RETRY_FOR`], then reported to its sender; the connection and readiness stay;
//! - any other error reply: reported to its sender at once;
//! - no answer (connection lost, timeout): everything is held and retried on a new
//!   connection, and readiness turns 503 until one is up.
//!
//! On a cluster ([sharded]) each node gets its own pipeline, and a redirection (`MOVED`,
//! `ASK`, `CLUSTERDOWN`) sends the publish again once the slot table is fresh.

mod sharded;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{RedisError, RedisResult, Value};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::{sleep, timeout};

use super::queue::Held;
use super::scripts::{self, PUBLISH};
use super::{Inner, REDIS_TIMEOUT, Redis, connect, next_backoff, stopping};
use crate::broker::Unavailable;
use crate::log;

/// Publishes sent in one pipeline...
const MAX_BATCH: usize = 128;
/// ...and about this many bytes of them, so a room of large messages keeps pipelines short.
const MAX_BATCH_BYTES: usize = 512 * 1024;
/// How long a publish that Redis refuses with a passing error is retried.
pub(super) const RETRY_FOR: Duration = Duration::from_secs(2);

/// What one reply means for its publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    /// Refused for now (memory, loading, a script running, a failover, an earlier publish
    /// of the room not applied yet): try again.
    Retry,
    /// Refused for good: tell the sender.
    Failed,
    /// The script is not loaded on this server.
    NoScript,
    /// On a cluster: the slot is elsewhere, moving, or has no master for now. Sent again,
    /// with no deadline (like a lost connection), once the slot table is fresh.
    Reroute,
}

fn outcome(reply: &RedisResult<Value>, sharded: bool) -> Outcome {
    let Err(error) = reply else {
        return Outcome::Applied;
    };
    match error.code() {
        Some("NOSCRIPT") => Outcome::NoScript,
        Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN") if sharded => Outcome::Reroute,
        Some(
            "OOM"
            | "BUSY"
            | "LOADING"
            | "READONLY"
            | "MASTERDOWN"
            | "TRYAGAIN"
            | "CLUSTERDOWN"
            | "NOREPLICAS"
            | scripts::GAP_ERROR,
        ) => Outcome::Retry,
        _ => Outcome::Failed,
    }
}

/// Sends held publishes to Redis in queue order, room by room in turn.
pub(super) struct Publisher {
    inner: Arc<Inner>,
}

/// What a batch's replies ask of the publisher.
#[derive(Default)]
struct Settled {
    /// The script must be loaded first.
    needs_script: bool,
    /// The slot table is stale.
    rerouted: bool,
    /// Publishes applied.
    applied: usize,
}

impl Publisher {
    pub(super) fn new(inner: Arc<Inner>) -> Publisher {
        Publisher { inner }
    }

    pub(super) async fn run(self, stopped: watch::Receiver<bool>) {
        let client = match &self.inner.redis {
            Redis::Single(client) => client.clone(),
            Redis::Cluster(cluster) => {
                let cluster = Arc::clone(cluster);
                return self.run_sharded(cluster, stopped).await;
            }
        };
        let mut stopped = stopped;
        let queue = &self.inner.queue;
        let mut connection: Option<MultiplexedConnection> = None;
        let mut backoff = Duration::ZERO;
        let mut error_streak = ErrorStreak::default();
        loop {
            if !backoff.is_zero() {
                // Stopping does not cut this short: what is held still goes out, until
                // the caller's drain deadline.
                tokio::select! {
                    _ = stopping(&mut stopped), if queue.held() == 0 => return,
                    _ = sleep(backoff) => {}
                }
            }
            // Connected eagerly, not at the first publish: readiness waits for this.
            let Some(live) = connection.as_mut() else {
                match connect(&client).await {
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
            let batch = queue.take(MAX_BATCH, MAX_BATCH_BYTES);
            if batch.is_empty() {
                tokio::select! {
                    _ = queue.ready.notified() => {}
                    _ = stopping(&mut stopped) => {
                        if queue.held() == 0 {
                            return;
                        }
                    }
                }
                continue;
            }
            let replies = match self.send(live, &batch).await {
                Ok(replies) => replies,
                Err(error) => {
                    // No answer: the batch may be partly applied; the numbers make the
                    // retry apply each publish once.
                    log::warn(
                        "redis publish failed, holding",
                        json!({ "error": log::cut(&error.to_string()), "held": queue.held() }),
                    );
                    queue.restore(batch);
                    connection = None;
                    self.inner.set_up(&self.inner.publisher_up, false);
                    backoff = next_backoff(backoff);
                    continue;
                }
            };
            backoff = Duration::ZERO;
            error_streak.retrying = false;
            let settled = self.settle(batch, &replies, &mut error_streak);
            error_streak.end_turn(&settled);
            if settled.needs_script {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(PUBLISH);
                if load.query_async::<String>(live).await.is_err() {
                    connection = None;
                }
            }
            if error_streak.retrying {
                backoff = next_backoff(error_streak.backoff);
                error_streak.backoff = backoff;
            }
            self.inner.metrics.publishes_held_now(queue.held());
        }
    }

    /// Acts on each reply; `streak` gathers the error replies of one turn (of every node's
    /// pipeline, on a cluster).
    fn settle(
        &self,
        batch: Vec<Held>,
        replies: &[RedisResult<Value>],
        streak: &mut ErrorStreak,
    ) -> Settled {
        let queue = &self.inner.queue;
        let sharded = matches!(self.inner.redis, Redis::Cluster(_));
        let mut returned: Vec<Held> = Vec::new();
        let mut given_up: Vec<Held> = Vec::new();
        let mut blocked_rooms: Vec<Arc<str>> = Vec::new();
        let mut settled = Settled::default();
        for (held, reply) in batch.into_iter().zip(replies) {
            // After a refusal, the room's later publishes wait their turn behind it.
            if blocked_rooms.contains(&held.room) {
                returned.push(held);
                continue;
            }
            let outcome = outcome(reply, sharded);
            match outcome {
                Outcome::Applied => {
                    settled.applied += 1;
                    queue.settle(&held, true);
                    held.origin.applied(scripts::accepted(reply));
                    continue;
                }
                // Redis forgot the script (a restart, or our first publish): loaded and
                // sent again at once, which is no refusal worth a word.
                Outcome::NoScript => settled.needs_script = true,
                Outcome::Retry => streak.retrying = true,
                Outcome::Reroute => {
                    settled.rerouted = true;
                    streak.retrying = true;
                }
                Outcome::Failed => {}
            }
            if !matches!(outcome, Outcome::NoScript | Outcome::Reroute) {
                streak.note(reply.as_ref().err());
            }
            let mut held = held;
            let give_up = match outcome {
                Outcome::Failed => true,
                Outcome::Retry => {
                    let since = *held.failing_since.get_or_insert_with(Instant::now);
                    since.elapsed() >= RETRY_FOR
                }
                _ => false,
            };
            blocked_rooms.push(Arc::clone(&held.room));
            if give_up {
                given_up.push(held);
            } else {
                if outcome == Outcome::Retry {
                    self.inner.metrics.publish_retried();
                }
                returned.push(held);
            }
        }
        // Back in the queue first, so giving up renumbers every later publish of the room,
        // these included: their predecessor was never applied.
        if !returned.is_empty() {
            queue.restore(returned);
        }
        for held in given_up {
            self.inner.metrics.publish_failed();
            queue.settle(&held, false);
            held.origin.settle(Err(Unavailable));
        }
        settled
    }

    /// One pipeline of publish scripts, in batch order, with a reply for each.
    async fn send(
        &self,
        connection: &mut MultiplexedConnection,
        batch: &[Held],
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        let mut pipeline = redis::pipe();
        pipeline.ignore_errors();
        for held in batch {
            scripts::add_publish(&mut pipeline, &self.inner, held);
        }
        match timeout(REDIS_TIMEOUT, pipeline.query_async(connection)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        }
    }
}

/// Error replies are logged once when they start and once when they stop, with a count,
/// so an out-of-memory Redis under load writes two lines, not thousands.
#[derive(Default)]
struct ErrorStreak {
    errors: u64,
    first: Option<String>,
    retrying: bool,
    backoff: Duration,
}

impl ErrorStreak {
    fn note(&mut self, error: Option<&RedisError>) {
        self.errors += 1;
        if self.first.is_none() {
            let text = error.map_or_else(String::new, |e| log::cut(&e.to_string()));
            log::warn("redis refused publishes", json!({ "error": text }));
            self.first = Some(text);
        }
    }

    /// After a turn's replies are settled: the streak ends with the first turn with none.
    fn end_turn(&mut self, settled: &Settled) {
        if !self.retrying && !settled.needs_script {
            self.end();
        }
    }

    fn end(&mut self) {
        if self.first.take().is_some() {
            log::info(
                "redis accepts publishes again",
                json!({ "refusals": self.errors }),
            );
        }
        self.errors = 0;
        self.backoff = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(text: &str) -> RedisResult<Value> {
        let (code, detail) = text.split_once(' ').unwrap();
        Err(redis::make_extension_error(
            code.into(),
            Some(detail.into()),
        ))
    }

    #[test]
    fn replies_are_sorted_into_what_to_do() {
        let outcome = |reply: &RedisResult<Value>| outcome(reply, false);
        assert_eq!(outcome(&Ok(Value::Int(7))), Outcome::Applied);
        assert_eq!(outcome(&Ok(Value::Int(0))), Outcome::Applied);
        assert_eq!(outcome(&server_error("OOM used memory")), Outcome::Retry);
        assert_eq!(outcome(&server_error("BUSY script")), Outcome::Retry);
        assert_eq!(outcome(&server_error("READONLY replica")), Outcome::Retry);
        assert_eq!(
            outcome(&server_error("ROOMCAST_GAP earlier")),
            Outcome::Retry
        );
        assert_eq!(outcome(&server_error("NOSCRIPT load")), Outcome::NoScript);
        assert_eq!(outcome(&server_error("WRONGTYPE bad key")), Outcome::Failed);
        let moved = server_error("MOVED 3999 127.0.0.1:6381");
        assert_eq!(
            outcome(&moved),
            Outcome::Failed,
            "one Redis never moves a slot"
        );
        assert_eq!(super::outcome(&moved, true), Outcome::Reroute);
        let migrating = server_error("TRYAGAIN Multiple keys request during rehashing of slot");
        assert_eq!(outcome(&migrating), Outcome::Retry);
        assert_eq!(super::outcome(&migrating, true), Outcome::Reroute);
    }
}
