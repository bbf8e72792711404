//! The publisher on a Redis Cluster: each turn's batch is split by the node that owns each
//! room's slot, and every node gets its pipeline at the same time, so a node that is slow or
//! gone holds back only its own rooms.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use redis::{RedisResult, Value};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::{Instant, sleep};

use super::{ErrorStreak, MAX_BATCH, MAX_BATCH_BYTES, Publisher, Settled};
use crate::broker::redis::cluster::{Cluster, no_owner};
use crate::broker::redis::queue::Held;
use crate::broker::redis::scripts::PUBLISH;
use crate::broker::redis::{next_backoff, stopping};
use crate::log;

/// How long the publisher sleeps when every node with publishes is waiting out a backoff:
/// a publish for another node waits at most this long.
const PARKED_PAUSE: Duration = Duration::from_millis(50);
/// The longest a node that keeps failing waits between tries: about a failover's length.
const MAX_NODE_WAIT: Duration = Duration::from_secs(1);

/// One node's share of a batch; `node` is `None` for rooms whose slot has no master now.
struct Share {
    node: Option<Arc<str>>,
    batch: Vec<Held>,
}

impl Publisher {
    pub(super) async fn run_sharded(
        self,
        cluster: Arc<Cluster>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let queue = &self.inner.queue;
        let mut pause = Duration::ZERO;
        let mut error_streak = ErrorStreak::default();
        let mut waits = NodeWaits::default();
        // Only one warning per outage of any node, not one per turn.
        let mut outage_logged = false;
        loop {
            if !pause.is_zero() {
                tokio::select! {
                    _ = stopping(&mut stopped), if queue.held() == 0 => return,
                    _ = sleep(pause) => {}
                }
            }
            // The table first: readiness waits for it, as for a connection to one Redis.
            if cluster.map().is_none() {
                let known = cluster.refresh().await.is_ok();
                self.inner.set_up(&self.inner.publisher_up, known);
                pause = if known {
                    Duration::ZERO
                } else {
                    next_backoff(pause)
                };
                continue;
            }
            pause = Duration::ZERO;
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
            // A node that just failed waits out its backoff; the other nodes do not wait.
            let (shares, waiting): (Vec<Share>, Vec<Share>) = cluster
                .by_owner(batch, |held| &held.room)
                .into_iter()
                .map(|(node, batch)| Share { node, batch })
                .partition(|share| waits.is_due(&share.node));
            let parked = !waiting.is_empty();
            for share in waiting {
                queue.restore(share.batch);
            }
            if shares.is_empty() {
                pause = waits.soonest().min(PARKED_PAUSE);
                continue;
            }
            let sends = shares
                .into_iter()
                .map(|share| self.send_share(&cluster, share));
            let mut unreachable = false;
            let mut stale_table = false;
            let mut turn = Settled::default();
            let mut turn_retrying = false;
            for (share, replies) in join_all(sends).await {
                match replies {
                    Ok(replies) => {
                        error_streak.retrying = false;
                        let settled = self.settle(share.batch, &replies, &mut error_streak);
                        // A node that applied nothing waits; one where only a room or two
                        // must retry (a slot moving, say) keeps serving its other rooms.
                        let refused = error_streak.retrying && settled.applied == 0;
                        waits.note(&share.node, refused);
                        turn_retrying |= error_streak.retrying;
                        stale_table |= settled.rerouted;
                        if settled.needs_script
                            && let Some(node) = &share.node
                        {
                            turn.needs_script = true;
                            load_script(&cluster, node).await;
                        }
                    }
                    Err(error) => {
                        // No answer: held and sent again, as with one Redis; the numbers
                        // make the retry apply each publish once.
                        if !outage_logged {
                            log::warn(
                                "redis cluster node unreachable, holding its publishes",
                                json!({ "error": log::cut(&error.to_string()), "held": queue.held() }),
                            );
                            outage_logged = true;
                        }
                        if let Some(node) = &share.node {
                            cluster.forget(node);
                        }
                        queue.restore(share.batch);
                        waits.note(&share.node, true);
                        unreachable = true;
                        stale_table = true;
                    }
                }
            }
            error_streak.retrying = turn_retrying;
            error_streak.end_turn(&turn);
            if unreachable || !parked {
                self.inner.set_up(&self.inner.publisher_up, !unreachable);
            }
            if !unreachable && !parked {
                outage_logged = false;
            }
            if stale_table {
                let _ = cluster.refresh().await;
            }
            self.inner.metrics.publishes_held_now(queue.held());
        }
    }

    async fn send_share(
        &self,
        cluster: &Arc<Cluster>,
        share: Share,
    ) -> (Share, RedisResult<Vec<RedisResult<Value>>>) {
        let Some(node) = &share.node else {
            return (share, Err(no_owner()));
        };
        let replies = match cluster.connection(node).await {
            Ok(mut connection) => self.send(&mut connection, &share.batch).await,
            Err(error) => Err(error),
        };
        (share, replies)
    }
}

/// Nodes that failed (no answer, or a refusal that passes) and when each may be tried again,
/// each with its own doubling backoff. `None` is the slots without a master.
#[derive(Default)]
struct NodeWaits {
    waits: HashMap<Option<Arc<str>>, (Instant, Duration)>,
}

impl NodeWaits {
    fn is_due(&self, node: &Option<Arc<str>>) -> bool {
        self.waits
            .get(node)
            .is_none_or(|(until, _)| Instant::now() >= *until)
    }

    fn note(&mut self, node: &Option<Arc<str>>, failed: bool) {
        if !failed {
            self.waits.remove(node);
            return;
        }
        let wait = self
            .waits
            .get(node)
            .map_or(Duration::ZERO, |(_, wait)| *wait);
        let wait = next_backoff(wait).min(MAX_NODE_WAIT);
        self.waits
            .insert(node.clone(), (Instant::now() + wait, wait));
    }

    /// How long until the first waiting node is due.
    fn soonest(&self) -> Duration {
        let now = Instant::now();
        self.waits
            .values()
            .map(|(until, _)| until.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::ZERO)
    }
}

/// Loads the publish script on a node that did not have it (new, or promoted).
async fn load_script(cluster: &Arc<Cluster>, node: &Arc<str>) {
    let Ok(mut connection) = cluster.connection(node).await else {
        return;
    };
    let mut load = redis::cmd("SCRIPT");
    load.arg("LOAD").arg(PUBLISH);
    if load.query_async::<String>(&mut connection).await.is_err() {
        cluster.forget(node);
    }
}
