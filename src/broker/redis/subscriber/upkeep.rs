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
            self.reap_presence(link).await?;
        }
        // A third of an entry's life: two refreshes may fail before a live one expires.
        let refresh_every = (self.inner.presence_ttl_ms / 3000).max(1);
        if self.sweeps.is_multiple_of(refresh_every) {
            self.refresh_presence(link).await?;
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

    /// Lets expired connections go (announcing users who left), and tells members a count
    /// that changed without an event.
    async fn reap_presence(&mut self, link: &mut Link) -> Result<(), RedisError> {
        let names: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        if names.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        pipeline.ignore_errors();
        for name in &names {
            presence::add_reap(&mut pipeline, &self.inner, name);
        }
        let counts: Vec<RedisResult<u64>> = pipeline.query_async(&mut link.commands).await?;
        let now = Instant::now();
        for (name, count) in names.iter().zip(counts) {
            if let (Some(room), Ok(count)) = (self.rooms.get_mut(name), count) {
                room.announce_count(
                    count,
                    self.inner.presence_events_max,
                    now,
                    &self.inner.metrics,
                );
            }
        }
        Ok(())
    }

    /// Keeps this instance's connections present, so only a crashed instance's expire.
    async fn refresh_presence(&mut self, link: &mut Link) -> Result<(), RedisError> {
        let mut pipeline = redis::pipe();
        for (name, room) in &self.rooms {
            let ids: Vec<u64> = room.members.iter().map(|member| member.id).collect();
            presence::add_refresh(&mut pipeline, &self.inner, name, &ids);
        }
        // Redis refuses an empty pipeline.
        if pipeline.is_empty() {
            return Ok(());
        }
        pipeline.query_async::<()>(&mut link.commands).await
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
