//! The room task: the pub/sub connection, joins and leaves, fan-out, and filling gaps.
//!
//! One task owns every room of the instance, so members are added, fed and removed in one
//! order without locks. Only rooms with local members are subscribed. A message that skips
//! seqs, or comes from a new epoch, is preceded by what was missed, read from the stream a
//! page at a time; after a reconnect every room catches up the same way. On a cluster a
//! room whose subscription ended (see [link]) is subscribed again where its slot now is, and
//! catches up the same way too, while the other rooms carry on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::RedisError;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, interval, sleep};

use super::presence;
use super::room::{self, Arrival, Room};
use super::scripts::{self, RoomState};
use super::wire::{self, Payload, Published};
use super::{Command, Inner, Member, Redis, is_outage, next_backoff, stopping};
use crate::broker::{
    MemberHandle, Members, Membership, PAGE_BYTES, PAGE_FRAMES, Resume, Unavailable, Visitor,
    plan_replay,
};
use crate::log;

mod link;
mod resettle;
mod upkeep;

use link::{Incoming, Link};

/// How often the room task drops closed members and pings the pub/sub connection.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Sweeps between two reaps of expired presence: leaves come at most this late.
const REAP_EVERY: u64 = 2;
/// A Redis connection that lasted this long was not flapping.
const STABLE_AFTER: Duration = Duration::from_secs(5);
/// How often a cluster's stranded rooms are tried again (at most [`resettle::SETTLE_AT_MOST`]
/// a turn).
const RESETTLE_EVERY: Duration = Duration::from_millis(250);

/// Owns the pub/sub connection and the local members of every room.
pub(super) struct RoomTask {
    inner: Arc<Inner>,
    rooms: HashMap<Arc<str>, Room>,
    /// Sweeps so far, which times the presence upkeep.
    sweeps: u64,
    /// Counts from a presence reap that runs beside the task, so fan-out never waits for it.
    reaped: mpsc::Receiver<Reaped>,
    reaped_sender: mpsc::Sender<Reaped>,
    /// A reap is on its way: the next one waits for it.
    reaping: bool,
    /// On a cluster: whether every slot and every room was reachable when last looked at.
    whole: bool,
}

/// Each room's count after a reap.
type Reaped = Vec<(Arc<str>, u64)>;

/// Why serving stopped.
enum Served {
    Stopped,
    Lost(String),
}

impl RoomTask {
    pub(super) fn new(inner: Arc<Inner>) -> RoomTask {
        let (reaped_sender, reaped) = mpsc::channel(1);
        RoomTask {
            inner,
            rooms: HashMap::new(),
            sweeps: 0,
            reaped,
            reaped_sender,
            reaping: false,
            whole: true,
        }
    }

    pub(super) async fn run(
        mut self,
        mut queue: mpsc::Receiver<Command>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::ZERO;
        let mut ever_connected = false;
        // One warning per outage, not one per attempt.
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
                        let error = log::cut(&error.to_string());
                        log::warn("redis unavailable", json!({ "error": error }));
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
            self.inner.set_up(&self.inner.pubsub_up, link.is_whole());
            log::info("redis connected", json!({ "rooms": self.rooms.len() }));
            let connected_at = Instant::now();
            let outcome = self.serve(&mut link, &mut queue, &mut stopped).await;
            self.inner.set_up(&self.inner.pubsub_up, false);
            let Served::Lost(reason) = outcome else {
                return;
            };
            log::warn(
                "redis connection lost",
                json!({ "reason": log::cut(&reason) }),
            );
            // The loss was just said; the attempts that follow stay quiet until one works.
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
        let mut link = match &self.inner.redis {
            Redis::Single(client) => Link::single(client).await?,
            Redis::Cluster(cluster) => Link::sharded(Arc::clone(cluster)).await?,
        };
        let names: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        for name in names {
            self.settle_room(&mut link, &name).await?;
        }
        Ok(link)
    }

    /// Subscribes a room with members here and brings it up to date from its stream.
    async fn settle_room(&mut self, link: &mut Link, name: &Arc<str>) -> Result<(), RedisError> {
        link.subscribe(name).await?;
        let mut commands = link.commands(name).await?;
        let state = scripts::room_state(&mut commands, &self.inner, name).await?;
        self.catch_up(link, name, &state.epoch, state.seq).await
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
        let mut resettle = interval(RESETTLE_EVERY);
        let sharded = matches!(self.inner.redis, Redis::Cluster(_));
        loop {
            let result = tokio::select! {
                _ = stopping(stopped) => return self.depart_all(link).await,
                command = queue.recv() => match command {
                    Some(Command::Join { room, resume, visitor, reply, inner }) => {
                        match self.join(link, room, resume, visitor, inner).await {
                            Ok(membership) => {
                                let _ = reply.send(Ok(membership));
                                Ok(())
                            }
                            // Redis answered, just not yes (out of memory, say): this join
                            // fails, the connection and readiness stay.
                            Err(error) if !is_outage(&error) => {
                                let _ = reply.send(Err(Unavailable));
                                Ok(())
                            }
                            Err(error) => {
                                let _ = reply.send(Err(Unavailable));
                                Err(error)
                            }
                        }
                    }
                    Some(Command::Leave { room, id }) => self.leave(link, &room, id).await,
                    None => return self.depart_all(link).await,
                },
                incoming = link.next() => match incoming {
                    Incoming::Message(message) => {
                        let channel = message.get_channel_name();
                        self.on_message(link, channel, message.get_payload_bytes()).await
                    }
                    Incoming::Shard { channel, payload } => {
                        self.on_message(link, &channel, &payload).await
                    }
                    Incoming::Handled => {
                        self.note_whole(link);
                        Ok(())
                    }
                    Incoming::Closed => return Served::Lost("pub/sub connection closed".into()),
                },
                _ = sweep.tick() => self.sweep(link).await,
                _ = resettle.tick(), if sharded && link.needs_resettle() => {
                    self.resettle(link).await;
                    Ok(())
                }
                Some(counts) = self.reaped.recv() => {
                    self.announce_counts(counts);
                    Ok(())
                }
            };
            match result {
                Ok(()) => {}
                Err(error) if !is_outage(&error) => {
                    // A refused read (a script error, memory): the room catches up later.
                    // On a cluster, a redirection means the table is stale: the watcher
                    // learns it again.
                    if let Some(link) = link.sharded_mut()
                        && matches!(error.code(), Some("MOVED" | "ASK"))
                    {
                        link.mark_stale();
                    }
                    log::debug(
                        "redis refused a read",
                        json!({ "error": log::cut(&error.to_string()) }),
                    );
                }
                // A cluster node that did not answer: its rooms wait, the rest carry on, and
                // the next look at the table pings every master, so a broken connection is
                // replaced.
                Err(_) if sharded => {
                    if let Some(link) = link.sharded_mut() {
                        link.mark_stale();
                    }
                    self.note_whole(link);
                }
                Err(error) => return Served::Lost(error.to_string()),
            }
        }
    }

    async fn join(
        &mut self,
        link: &mut Link,
        name: String,
        resume: Option<Resume>,
        visitor: Option<Visitor>,
        inner: Arc<Inner>,
    ) -> Result<Membership, RedisError> {
        let name: Arc<str> = Arc::from(name);
        if !self.rooms.contains_key(&name) {
            link.subscribe(&name).await?;
        }
        let mut commands = link.commands(&name).await?;
        let state = match scripts::room_state(&mut commands, &self.inner, &name).await {
            Ok(state) => state,
            Err(error) => {
                self.unsubscribe_if_empty(link, &name).await?;
                return Err(error);
            }
        };
        let RoomState { epoch, seq, oldest } = state;
        let room = self
            .rooms
            .entry(Arc::clone(&name))
            .or_insert_with(|| Room::new(epoch.clone(), seq));
        if room.epoch != epoch {
            // Redis lost the room since we last heard from it; members already here resync.
            room.move_to_epoch(epoch.clone());
            room.delivered = seq;
        }
        let replay = plan_replay(resume.as_ref(), &epoch, seq, oldest);
        let queue = (self.inner.send_queue, self.inner.send_queue_bytes);
        let (id, feed, weak_feed) = room.add_member(seq, queue);
        self.inner.metrics.rooms_now(self.rooms.len());
        let user = visitor.as_ref().map(|v| (v.id.as_str(), &*v.user));
        // Presence is not worth refusing a join for: without it the count is just unknown.
        let members = match presence::arrive(&mut commands, &self.inner, &name, id, user).await {
            Ok(members) => members,
            Err(error) if is_outage(&error) => return Err(error),
            Err(_) => Members::default(),
        };
        if let Some(room) = self.rooms.get_mut(&name) {
            room.welcomed_alone(members.count);
        }
        let member = Member {
            inner,
            room: name,
            id,
            feed: weak_feed,
        };
        let membership = Membership::new(feed, epoch, seq, replay, MemberHandle::Redis(member));
        Ok(membership.with_members(members))
    }

    fn forget(&mut self, room: &str, id: u64) {
        if let Some(state) = self.rooms.get_mut(room) {
            state.forget(id);
        }
    }

    async fn leave(&mut self, link: &mut Link, room: &str, id: u64) -> Result<(), RedisError> {
        self.forget(room, id);
        let mut pipeline = redis::pipe();
        presence::add_depart(&mut pipeline, &self.inner, room, id);
        pipeline
            .query_async::<()>(&mut link.commands(room).await?)
            .await?;
        self.unsubscribe_if_empty(link, room).await
    }

    async fn unsubscribe_if_empty(
        &mut self,
        link: &mut Link,
        room: &str,
    ) -> Result<(), RedisError> {
        if self
            .rooms
            .get(room)
            .is_none_or(|state| state.members.is_empty())
        {
            self.rooms.remove(room);
            self.inner.metrics.rooms_now(self.rooms.len());
            link.unsubscribe(room).await?;
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        link: &mut Link,
        channel: &str,
        payload: &[u8],
    ) -> Result<(), RedisError> {
        let Some(name) = wire::room_of(channel) else {
            return Ok(());
        };
        let Some(room) = self.rooms.get(name) else {
            return Ok(());
        };
        let Ok(payload) = std::str::from_utf8(payload) else {
            return Ok(());
        };
        let (seq, epoch, frame) = match Payload::parse(payload) {
            Some(Payload::Chat(Published { seq, epoch, frame })) => (seq, epoch, frame),
            Some(Payload::Presence {
                kind,
                count,
                connection,
                user,
            }) => {
                // A member is not told of its own join: its welcome said it.
                let own = connection
                    .strip_prefix(self.inner.instance.as_str())
                    .and_then(|rest| rest.strip_prefix(':'))
                    .and_then(|id| id.parse::<u64>().ok());
                if let Some(room) = self.rooms.get_mut(name) {
                    room.tell_presence(kind, count, user, own, &self.inner.metrics);
                }
                return Ok(());
            }
            None => return Ok(()),
        };
        match room.arrival(seq, epoch) {
            Arrival::Duplicate => return Ok(()),
            Arrival::Next => {}
            Arrival::Gap => {
                let name: Arc<str> = Arc::from(name);
                self.catch_up(link, &name, epoch, seq - 1).await?;
            }
        }
        let frame = self.inner.frames.frame(frame.to_string());
        if let Some(room) = self.rooms.get_mut(name)
            && room.arrival(seq, epoch) == Arrival::Next
        {
            room.fan_out(seq, &frame, &self.inner.metrics);
        }
        if self.inner.frames.alive() > self.inner.max_backlog_bytes {
            let limit = self.inner.max_backlog_bytes / 2;
            let (frames, metrics) = (&self.inner.frames, &self.inner.metrics);
            room::cut_largest_backlogs(self.rooms.values_mut(), || frames.alive() > limit, metrics);
        }
        Ok(())
    }

    /// Brings a room up to seq `until` of `epoch`, from its stream, a page at a time.
    async fn catch_up(
        &mut self,
        link: &mut Link,
        name: &Arc<str>,
        epoch: &str,
        until: u64,
    ) -> Result<(), RedisError> {
        let mut commands = link.commands(name).await?;
        loop {
            let Some(room) = self.rooms.get_mut(name) else {
                return Ok(());
            };
            if room.epoch != epoch {
                room.move_to_epoch(epoch.to_string());
            }
            if room.delivered >= until {
                return Ok(());
            }
            let (after, limits) = (room.delivered, (PAGE_FRAMES, PAGE_BYTES));
            let page = scripts::page(
                &mut commands,
                &self.inner,
                name,
                epoch,
                after,
                until,
                limits,
            )
            .await?;
            let Some(room) = self.rooms.get_mut(name) else {
                return Ok(());
            };
            match page {
                // The room moved on to another epoch meanwhile; its messages will say so.
                None => return Ok(()),
                Some(page) if page.is_empty() => {
                    room.skip_to(until);
                    return Ok(());
                }
                Some(page) => room.absorb(page, &self.inner.metrics),
            }
        }
    }
}
