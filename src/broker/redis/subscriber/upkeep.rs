//! The room task's upkeep: members gone without a word, presence kept fresh and reaped, and
//! the entries of a stopping instance let go.

use std::sync::Arc;

use redis::{RedisError, RedisResult, Value};
use tokio::time::{Instant, timeout};

use super::{Link, REAP_EVERY, RoomTask, Served};
use crate::broker::redis::{REDIS_TIMEOUT, presence};

impl RoomTask {
    /// Drops members whose sessions ended without a leave, unsubscribes empty rooms, keeps
    /// presence fresh, and pings the pub/sub connection so a silent Redis is noticed.
    pub(super) async fn sweep(&mut self, link: &mut Link) -> Result<(), RedisError> {
        self.sweeps += 1;
        if self.sweeps.is_multiple_of(REAP_EVERY) {
            self.reap_presence(link);
        }
        // A third of an entry's life: two refreshes may fail before a live one expires.
        let refresh_every = (self.inner.presence_ttl_ms / 3000).max(1);
        if self.sweeps.is_multiple_of(refresh_every) {
            self.refresh_presence(link);
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
        match timeout(REDIS_TIMEOUT, link.sink.ping::<Value>()).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        }
    }

    /// Lets expired connections go (announcing users who left), beside the task: with many
    /// rooms the pipeline takes a while, and deliveries must not wait for it.
    fn reap_presence(&mut self, link: &Link) {
        let names: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        if names.is_empty() || self.reaping {
            return;
        }
        let mut pipeline = redis::pipe();
        pipeline.ignore_errors();
        for name in &names {
            presence::add_reap(&mut pipeline, &self.inner, name);
        }
        let mut commands = link.commands.clone();
        let done = self.reaped_sender.clone();
        self.reaping = true;
        tokio::spawn(async move {
            let query = pipeline.query_async::<Vec<RedisResult<u64>>>(&mut commands);
            // A failed reap is tried again at the next turn; a lost Redis is noticed by
            // the task's own ping.
            let counts = match timeout(REDIS_TIMEOUT, query).await {
                Ok(Ok(counts)) => counts,
                _ => Vec::new(),
            };
            let counts = names
                .into_iter()
                .zip(counts)
                .filter_map(|(name, count)| Some((name, count.ok()?)))
                .collect();
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
    fn refresh_presence(&self, link: &Link) {
        let mut pipeline = redis::pipe();
        for (name, room) in &self.rooms {
            let ids: Vec<u64> = room.members.iter().map(|member| member.id).collect();
            presence::add_refresh(&mut pipeline, &self.inner, name, &ids);
        }
        // Redis refuses an empty pipeline.
        if pipeline.is_empty() {
            return;
        }
        let mut commands = link.commands.clone();
        tokio::spawn(async move {
            let query = pipeline.query_async::<()>(&mut commands);
            let _ = timeout(REDIS_TIMEOUT, query).await;
        });
    }

    /// The instance is stopping: every connection it still holds leaves as if closed, so a
    /// user who does not reconnect elsewhere within the linger leaves then, not only when the
    /// presence TTL runs out.
    pub(super) async fn depart_all(&mut self, link: &mut Link) -> Served {
        let mut pipeline = redis::pipe();
        for (room, state) in &self.rooms {
            for member in &state.members {
                presence::add_depart(&mut pipeline, &self.inner, room, member.id);
            }
        }
        let _ = timeout(
            REDIS_TIMEOUT,
            pipeline.query_async::<()>(&mut link.commands),
        )
        .await;
        Served::Stopped
    }
}
