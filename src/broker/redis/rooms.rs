//! The room task: the pub/sub connection, local members, fan-out and gap filling.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{Client, RedisError, Value};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, interval, sleep, timeout};

use super::scripts::{Snapshot, snapshot};
use super::wire::{self, Published};
use super::{Command, Inner, Member, REDIS_TIMEOUT, connect, next_backoff, stopping};
use crate::broker::{Delivery, Frame, MemberHandle, Membership, Resume, Unavailable, plan_replay};
use crate::log;
use crate::metrics::Metrics;
use crate::protocol::{self, ResetReason};

/// How often the room task drops closed members and pings the pub/sub connection.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A Redis connection that lasted this long was not flapping.
const STABLE_AFTER: Duration = Duration::from_secs(5);

struct RemoteMember {
    id: u64,
    /// Only messages after this seq go to this member: earlier ones were in its replay.
    live_after: u64,
    /// The other end is the session's `Membership::feed`.
    feed: mpsc::Sender<Delivery>,
}

struct Room {
    epoch: String,
    /// The last seq fanned out here; the next one must be `delivered + 1`.
    delivered: u64,
    members: Vec<RemoteMember>,
    next_member_id: u64,
}

impl Room {
    /// Queues `delivery` to every member that should see `seq`, closing the ones that lag.
    fn fan_out(&mut self, seq: u64, delivery: &Delivery, metrics: &Metrics) {
        let mut delivered = 0;
        self.members.retain(|member| {
            if member.live_after >= seq {
                return true;
            }
            match member.feed.try_send(delivery.clone()) {
                Ok(()) => {
                    delivered += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics.slow_reader_dropped();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        metrics.frames_queued(delivered);
    }

    fn notify_reset(&mut self, reason: ResetReason) {
        let frame = Frame::from(protocol::reset_frame(&self.epoch, self.delivered, reason));
        self.members
            .retain(|member| member.feed.try_send(Delivery::Reset(frame.clone())).is_ok());
    }

    /// Brings the room from `delivered` up to `snapshot`, telling members when history is lost.
    fn catch_up(&mut self, snapshot: Snapshot, before: u64, metrics: &Metrics) {
        if snapshot.epoch != self.epoch {
            self.epoch = snapshot.epoch;
            self.delivered = 0;
            for member in &mut self.members {
                member.live_after = 0;
            }
            self.notify_reset(ResetReason::Epoch);
        } else if snapshot
            .entries
            .first()
            .is_some_and(|(seq, _)| *seq > self.delivered + 1)
        {
            self.notify_reset(ResetReason::History);
        }
        for (seq, frame) in snapshot.entries {
            if seq > self.delivered && seq < before {
                self.fan_out(seq, &Delivery::Chat(frame), metrics);
                self.delivered = seq;
            }
        }
    }
}

/// Owns the pub/sub connection and the local members of every room.
pub(super) struct RoomTask {
    inner: Arc<Inner>,
    client: Client,
    rooms: HashMap<Arc<str>, Room>,
}

/// The live connections of the room task.
struct Link {
    sink: PubSubSink,
    messages: PubSubStream,
    commands: MultiplexedConnection,
}

impl RoomTask {
    pub(super) fn new(inner: Arc<Inner>, client: Client) -> RoomTask {
        RoomTask {
            inner,
            client,
            rooms: HashMap::new(),
        }
    }

    pub(super) async fn run(
        mut self,
        mut queue: mpsc::Receiver<Command>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::ZERO;
        let mut ever_connected = false;
        // One warning per outage, not one per attempt: "unavailable" before the first
        // connection, "lost" after each one.
        let mut outage_logged = false;
        loop {
            let link = tokio::select! {
                _ = stopping(&mut stopped) => return,
                link = self.connect() => link,
            };
            let mut link = match link {
                Ok(link) => link,
                Err(error) => {
                    if !outage_logged {
                        log::warn("redis unavailable", json!({ "error": error.to_string() }));
                        outage_logged = true;
                    }
                    backoff = next_backoff(backoff);
                    if self
                        .refuse_joins_for(backoff, &mut queue, &mut stopped)
                        .await
                    {
                        return;
                    }
                    continue;
                }
            };
            if ever_connected {
                self.inner.metrics.broker_reconnected();
            }
            ever_connected = true;
            self.inner.set_up(&self.inner.pubsub_up, true);
            log::info("redis connected", json!({ "rooms": self.rooms.len() }));
            let connected_at = Instant::now();
            let outcome = self.serve(&mut link, &mut queue, &mut stopped).await;
            self.inner.set_up(&self.inner.pubsub_up, false);
            let Served::Lost(reason) = outcome else {
                return;
            };
            log::warn("redis connection lost", json!({ "reason": reason }));
            outage_logged = true;
            // A connection that held for a while earns a quick retry; one that keeps failing
            // at once (a flapping Redis) backs off further each time.
            if connected_at.elapsed() > STABLE_AFTER {
                backoff = Duration::ZERO;
            }
            backoff = next_backoff(backoff);
            if self
                .refuse_joins_for(backoff, &mut queue, &mut stopped)
                .await
            {
                return;
            }
        }
    }

    /// Connects, resubscribes every room and fills what each missed while away.
    async fn connect(&mut self) -> Result<Link, RedisError> {
        let pubsub = timeout(REDIS_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
        let (mut sink, messages) = pubsub.split();
        let mut commands = connect(&self.client).await?;
        let names: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        for name in names {
            subscribe(&mut sink, &name).await?;
            let room = &self.rooms[&name];
            let latest = snapshot(
                &mut commands,
                &self.inner,
                &name,
                Some(room.delivered),
                Some(&room.epoch),
            )
            .await?;
            if let Some(room) = self.rooms.get_mut(&name) {
                room.catch_up(latest, u64::MAX, &self.inner.metrics);
            }
        }
        Ok(Link {
            sink,
            messages,
            commands,
        })
    }

    /// While Redis is away: wait out the backoff, refusing joins and taking leaves.
    /// Returns true when the broker is stopping.
    async fn refuse_joins_for(
        &mut self,
        wait: Duration,
        queue: &mut mpsc::Receiver<Command>,
        stopped: &mut watch::Receiver<bool>,
    ) -> bool {
        let pause = sleep(wait);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = stopping(stopped) => return true,
                _ = &mut pause => return false,
                command = queue.recv() => match command {
                    Some(Command::Join { reply, .. }) => {
                        let _ = reply.send(Err(Unavailable));
                    }
                    Some(Command::Leave { room, id }) => self.forget(&room, id),
                    None => return true,
                },
            }
        }
    }

    async fn serve(
        &mut self,
        link: &mut Link,
        queue: &mut mpsc::Receiver<Command>,
        stopped: &mut watch::Receiver<bool>,
    ) -> Served {
        let mut sweep = interval(SWEEP_EVERY);
        loop {
            let result = tokio::select! {
                _ = stopping(stopped) => return Served::Stopped,
                command = queue.recv() => match command {
                    Some(Command::Join { room, resume, reply, inner }) => {
                        let joined = self.join(link, room, resume, inner).await;
                        let failed = joined.as_ref().err().map(|e| e.to_string());
                        let _ = reply.send(joined.map_err(|_| Unavailable));
                        match failed {
                            Some(error) => Err(error),
                            None => Ok(()),
                        }
                    }
                    Some(Command::Leave { room, id }) => self.leave(link, &room, id).await,
                    None => return Served::Stopped,
                },
                message = link.messages.next() => match message {
                    Some(message) => self.on_message(link, &message).await,
                    None => Err("pub/sub connection closed".to_string()),
                },
                _ = sweep.tick() => self.sweep(link).await,
            };
            if let Err(reason) = result {
                return Served::Lost(reason);
            }
        }
    }

    async fn join(
        &mut self,
        link: &mut Link,
        name: String,
        resume: Option<Resume>,
        inner: Arc<Inner>,
    ) -> Result<Membership, RedisError> {
        let name: Arc<str> = Arc::from(name);
        let is_new = !self.rooms.contains_key(&name);
        if is_new {
            subscribe(&mut link.sink, &name).await?;
        }
        let since = resume.as_ref().map(|r| r.since);
        let reader_epoch = resume.as_ref().and_then(|r| r.epoch.as_deref());
        let latest = snapshot(&mut link.commands, &self.inner, &name, since, reader_epoch).await?;
        let room = self.rooms.entry(Arc::clone(&name)).or_insert_with(|| Room {
            epoch: latest.epoch.clone(),
            delivered: latest.seq,
            members: Vec::new(),
            next_member_id: 0,
        });
        if room.epoch != latest.epoch {
            // Redis lost the room since we last heard from it; members already here resync.
            room.epoch = latest.epoch.clone();
            room.delivered = latest.seq;
            room.notify_reset(ResetReason::Epoch);
        }
        let replay = plan_replay(
            resume.as_ref(),
            &latest.epoch,
            latest.seq,
            latest.entries.iter().map(|(seq, frame)| (*seq, frame)),
        );
        let (sender, feed) = mpsc::channel(self.inner.send_queue);
        let id = room.next_member_id;
        room.next_member_id += 1;
        room.members.push(RemoteMember {
            id,
            live_after: latest.seq,
            feed: sender,
        });
        self.inner.metrics.rooms_now(self.rooms.len());
        let member = Member {
            inner,
            room: name,
            id,
        };
        Ok(Membership::new(
            feed,
            latest.epoch,
            latest.seq,
            replay,
            MemberHandle::Redis(member),
        ))
    }

    fn forget(&mut self, room: &str, id: u64) {
        if let Some(state) = self.rooms.get_mut(room) {
            state.members.retain(|member| member.id != id);
        }
    }

    async fn leave(&mut self, link: &mut Link, room: &str, id: u64) -> Result<(), String> {
        self.forget(room, id);
        if self
            .rooms
            .get(room)
            .is_some_and(|state| state.members.is_empty())
        {
            self.rooms.remove(room);
            self.inner.metrics.rooms_now(self.rooms.len());
            unsubscribe(&mut link.sink, room)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn on_message(&mut self, link: &mut Link, message: &redis::Msg) -> Result<(), String> {
        let Some(name) = wire::room_of(message.get_channel_name()) else {
            return Ok(());
        };
        let Some(room) = self.rooms.get(name) else {
            return Ok(());
        };
        let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else {
            return Ok(());
        };
        let Some(Published { seq, epoch, frame }) = Published::parse(payload) else {
            return Ok(());
        };
        if epoch == room.epoch && seq <= room.delivered {
            return Ok(());
        }
        // Missed messages (or a new epoch): fetch the gap from the stream, in order.
        let missing = if epoch != room.epoch || seq > room.delivered + 1 {
            let (since, reader_epoch) = (room.delivered, room.epoch.clone());
            let gap = snapshot(
                &mut link.commands,
                &self.inner,
                name,
                Some(since),
                Some(&reader_epoch),
            );
            Some(gap.await.map_err(|e| e.to_string())?)
        } else {
            None
        };
        let Some(room) = self.rooms.get_mut(name) else {
            return Ok(());
        };
        if let Some(missing) = missing {
            room.catch_up(missing, seq, &self.inner.metrics);
            if seq <= room.delivered || epoch != room.epoch {
                return Ok(());
            }
        }
        let delivery = Delivery::Chat(Frame::from(frame.to_string()));
        room.fan_out(seq, &delivery, &self.inner.metrics);
        room.delivered = seq;
        Ok(())
    }

    /// Drops members whose sessions ended without a leave, unsubscribes empty rooms, and
    /// pings the pub/sub connection so a silent Redis is noticed.
    async fn sweep(&mut self, link: &mut Link) -> Result<(), String> {
        let mut empty = Vec::new();
        for (name, room) in &mut self.rooms {
            room.members.retain(|member| !member.feed.is_closed());
            if room.members.is_empty() {
                empty.push(Arc::clone(name));
            }
        }
        for name in empty {
            self.rooms.remove(&name);
            unsubscribe(&mut link.sink, &name)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.inner.metrics.rooms_now(self.rooms.len());
        match timeout(REDIS_TIMEOUT, link.sink.ping::<Value>()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("pub/sub ping timed out".to_string()),
        }
    }
}

enum Served {
    Stopped,
    Lost(String),
}

async fn subscribe(sink: &mut PubSubSink, room: &str) -> Result<(), RedisError> {
    match timeout(REDIS_TIMEOUT, sink.subscribe(wire::channel(room))).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
    }
}

async fn unsubscribe(sink: &mut PubSubSink, room: &str) -> Result<(), RedisError> {
    match timeout(REDIS_TIMEOUT, sink.unsubscribe(wire::channel(room))).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
    }
}
