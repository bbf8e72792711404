//! The room task's upkeep: members gone without a word, presence kept fresh and reaped, and
//! the entries of a stopping instance let go.

use std::sync::Arc;

use futures_util::future::join_all;
use redis::{RedisError, RedisResult};
use tokio::time::{Instant, timeout};

use super::{Link, REAP_EVERY, RoomTask, Served};
use crate::broker::redis::{REDIS_TIMEOUT, presence};

impl RoomTask {
    /// Drops members whose sessions ended without a leave, unsubscribes empty rooms, keeps
    /// presence fresh, and pings the pub/sub connection so a silent Redis is noticed.
    pub(super) async fn sweep(&mut self, link: &mut Link) -> Result<(), RedisError> {
        self.sweeps += 1;
        if self.sweeps.is_multiple_of(REAP_EVERY) {
            self.reap_presence(link).await;
        }
        // A third of an entry's life: two refreshes may fail before a live one expires.
        let refresh_every = (self.inner.presence_ttl_ms / 3000).max(1);
        if self.sweeps.is_multiple_of(refresh_every) {
            self.refresh_presence(link).await;
        }
        let mut empty = Vec::new();
        for (name, room) in &mut self.rooms {
            room.members.retain(|member| !member.feed.is_gone());
            if room.members.is_empty() {
                empty.push(Arc::clone(name));
            }
        }
        for name in empty {
            self.unsubscribe_if_empty(link, &name).await?;
        }
        link.ping().await
    }

    /// Lets expired connections go (announcing users who left), beside the task: with many
    /// rooms the pipeline takes a while, and deliveries must not wait for it.
    async fn reap_presence(&mut self, link: &Link) {
        let names: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        if names.is_empty() || self.reaping {
            return;
        }
        let mut reaps = Vec::new();
        for (mut commands, names) in link.by_node(names).await {
            let mut pipeline = redis::pipe();
            pipeline.ignore_errors();
            for name in &names {
                presence::add_reap(&mut pipeline, &self.inner, name);
            }
            reaps.push(async move {
                let query = pipeline.query_async::<Vec<RedisResult<u64>>>(&mut commands);
                // A failed reap is tried again at the next turn; a lost Redis is noticed by
                // the task's own ping.
                let counts = match timeout(REDIS_TIMEOUT, query).await {
                    Ok(Ok(counts)) => counts,
                    _ => Vec::new(),
                };
                names
                    .into_iter()
                    .zip(counts)
                    .filter_map(|(name, count)| Some((name, count.ok()?)))
                    .collect::<Vec<_>>()
            });
        }
        let done = self.reaped_sender.clone();
        self.reaping = true;
        tokio::spawn(async move {
            let counts = join_all(reaps).await.into_iter().flatten().collect();
            let _ = done.send(counts).await;
        });
    }

    /// Tells members a count that changed without an event.
    pub(super) fn announce_counts(&mut self, counts: Vec<(Arc<str>, u64)>) {
        self.reaping = false;
        let now = Instant::now();
        for (name, count) in counts {
            if let Some(room) = self.rooms.get_mut(&name) {
                room.announce_count(
                    count,
                    self.inner.presence_events_max,
                    now,
                    &self.inner.metrics,
                );
            }
        }
    }

    /// Keeps this instance's connections present, so only a crashed instance's expire;
    /// beside the task, like the reap.
    async fn refresh_presence(&self, link: &Link) {
        let names: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        for (mut commands, names) in link.by_node(names).await {
            let mut pipeline = redis::pipe();
            for name in &names {
                let ids: Vec<u64> = self.rooms[name].members.iter().map(|m| m.id).collect();
                presence::add_refresh(&mut pipeline, &self.inner, name, &ids);
            }
            // Redis refuses an empty pipeline.
            if pipeline.is_empty() {
                continue;
            }
            tokio::spawn(async move {
                let query = pipeline.query_async::<()>(&mut commands);
                let _ = timeout(REDIS_TIMEOUT, query).await;
            });
        }
    }

    /// The instance is stopping: every connection it still holds leaves as if closed, so a
    /// user who does not reconnect elsewhere within the linger leaves then, not only when the
    /// presence TTL runs out.
    pub(super) async fn depart_all(&mut self, link: &mut Link) -> Served {
        let names: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        let mut departs = Vec::new();
        for (mut commands, names) in link.by_node(names).await {
            let mut pipeline = redis::pipe();
            for name in &names {
                for member in &self.rooms[name].members {
                    presence::add_depart(&mut pipeline, &self.inner, name, member.id);
                }
            }
            departs.push(async move {
                let query = pipeline.query_async::<()>(&mut commands);
                let _ = timeout(REDIS_TIMEOUT, query).await;
            });
        }
        join_all(departs).await;
        Served::Stopped
    }
}
