//! The publisher on a Redis Cluster: each turn's batch is split by the node that owns each
//! room's slot, and every node gets its pipeline at the same time, so a node that is slow or
//! gone holds back only its own rooms.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis::{RedisResult, Value};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::{Instant, sleep};

use super::{ErrorStreak, MAX_BATCH, MAX_BATCH_BYTES, Publisher};
use crate::broker::redis::cluster::{Cluster, no_owner};
use crate::broker::redis::queue::Held;
use crate::broker::redis::scripts::PUBLISH;
use crate::broker::redis::{next_backoff, stopping};
use crate::log;

/// The longest a node that keeps failing waits between tries: about a failover's length.
const MAX_NODE_WAIT: Duration = Duration::from_secs(1);

/// One node's pipeline on its way, and what came back.
type Sending<'a> =
    Pin<Box<dyn Future<Output = (Share, RedisResult<Vec<RedisResult<Value>>>)> + Send + 'a>>;

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
        let mut table_wait = Duration::ZERO;
        let mut nodes = Nodes::default();
        // Each node's pipeline in flight; a node has at most one, and its rooms wait their
        // turn meanwhile, so a room's publishes stay in order.
        let mut sending: FuturesUnordered<Sending<'_>> = FuturesUnordered::new();
        let mut stopping_seen = false;
        loop {
            if stopping_seen && queue.held() == 0 {
                return;
            }
            // The table first: readiness waits for it, as for a connection to one Redis.
            if cluster.map().is_none() {
                let known = cluster.refresh().await.is_ok();
                self.inner.set_up(&self.inner.publisher_up, known);
                table_wait = if known {
                    Duration::ZERO
                } else {
                    next_backoff(table_wait)
                };
                tokio::select! {
                    _ = stopping(&mut stopped), if !stopping_seen => stopping_seen = true,
                    _ = sleep(table_wait) => {}
                }
                continue;
            }
            let batch = queue.take_where(MAX_BATCH, MAX_BATCH_BYTES, |room| {
                nodes.is_free(&cluster.owner(room))
            });
            for (node, batch) in cluster.by_owner(batch, |held| &held.room) {
                nodes.busy.push(node.clone());
                sending.push(Box::pin(self.send_share(&cluster, Share { node, batch })));
            }
            let due = nodes.soonest_due();
            tokio::select! {
                Some((share, replies)) = sending.next() => {
                    nodes.busy.retain(|busy| *busy != share.node);
                    self.settle_share(&cluster, share, replies, &mut nodes).await;
                    self.inner.set_up(&self.inner.publisher_up, nodes.unreachable.is_empty());
                    self.inner.metrics.publishes_held_now(queue.held());
                }
                _ = queue.ready.notified() => {}
                _ = sleep(due.unwrap_or_default()), if due.is_some() => {}
                _ = stopping(&mut stopped), if !stopping_seen => stopping_seen = true,
            }
        }
    }

    /// Acts on one node's replies, or on its silence.
    async fn settle_share(
        &self,
        cluster: &Arc<Cluster>,
        share: Share,
        replies: RedisResult<Vec<RedisResult<Value>>>,
        nodes: &mut Nodes,
    ) {
        let node = share.node;
        let replies = match replies {
            Ok(replies) => replies,
            Err(error) => {
                // No answer: held and sent again, as with one Redis; the numbers make the
                // retry apply each publish once.
                if nodes.unreachable.is_empty() {
                    log::warn(
                        "redis cluster node unreachable, holding its publishes",
                        json!({ "error": log::cut(&error.to_string()), "held": self.inner.queue.held() }),
                    );
                }
                if let Some(node) = &node {
                    cluster.forget(node);
                }
                self.inner.queue.restore(share.batch);
                nodes.failed(&node, true);
                if !nodes.unreachable.contains(&node) {
                    nodes.unreachable.push(node);
                }
                cluster.refresh_soon();
                nodes.forget_gone(cluster);
                return;
            }
        };
        let streak = nodes.streaks.entry(node.clone()).or_default();
        streak.retrying = false;
        let settled = self.settle(share.batch, &replies, streak);
        streak.end_turn(&settled);
        // A node that applied nothing waits; one where only a room or two must retry (a slot
        // moving, say) keeps serving its other rooms.
        let refused = streak.retrying && settled.applied == 0;
        nodes.failed(&node, refused);
        if settled.needs_script
            && let Some(node) = &node
        {
            load_script(cluster, node).await;
        }
        if settled.rerouted {
            cluster.refresh_soon();
        }
        nodes.forget_gone(cluster);
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

/// What the publisher knows of each node (`None` is the slots without a master).
#[derive(Default)]
struct Nodes {
    /// Nodes with a pipeline in flight.
    busy: Vec<Option<Arc<str>>>,
    /// Nodes that failed (no answer, or refused all they got), when each may be tried
    /// again, each with its own doubling backoff.
    waits: HashMap<Option<Arc<str>>, (Instant, Duration)>,
    /// Nodes whose last pipeline got no answer: the instance is not ready meanwhile.
    unreachable: Vec<Option<Arc<str>>>,
    /// Each node's run of error replies, logged when it starts and ends.
    streaks: HashMap<Option<Arc<str>>, ErrorStreak>,
}

impl Nodes {
    fn is_free(&self, node: &Option<Arc<str>>) -> bool {
        !self.busy.contains(node)
            && self
                .waits
                .get(node)
                .is_none_or(|(until, _)| Instant::now() >= *until)
    }

    /// Notes whether a node's pipeline failed; one that did waits out its backoff.
    fn failed(&mut self, node: &Option<Arc<str>>, failed: bool) {
        if !failed {
            self.waits.remove(node);
            self.unreachable.retain(|down| down != node);
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

    /// Stops counting as unreachable a node the table no longer names as a master (its
    /// replica took over).
    fn forget_gone(&mut self, cluster: &Cluster) {
        if self.unreachable.is_empty() {
            return;
        }
        let masters = cluster.map().map(|map| map.masters()).unwrap_or_default();
        self.unreachable
            .retain(|node| node.as_ref().is_some_and(|node| masters.contains(node)));
    }

    /// How long until the first waiting node is due, if one is still waiting.
    fn soonest_due(&self) -> Option<Duration> {
        let now = Instant::now();
        self.waits
            .values()
            .filter(|(until, _)| *until > now)
            .map(|(until, _)| *until - now)
            .min()
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
