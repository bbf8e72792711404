//! The room task's connections: to one Redis, a pub/sub connection and a command connection;
//! to a cluster, a sharded pub/sub connection per node that owns a subscribed room, and the
//! cluster's command connections. A cluster room whose subscription ended (its slot moved,
//! its node went away) is *stranded* until the room task subscribes it again where its slot
//! now is.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{Client, RedisError, RedisResult, Value};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};

use crate::broker::redis::cluster::shard::{Confirmation, ShardEvent, ShardLink};
use crate::broker::redis::cluster::{Cluster, no_owner};
use crate::broker::redis::{REDIS_TIMEOUT, connect, wire};

/// Shard events waiting for the room task, each at most one message (64 KiB by default):
/// past this, each node's reader waits, the kernel's socket buffer fills, and Redis holds
/// the rest (cutting the connection past `client-output-buffer-limit pubsub`).
const SHARD_EVENTS: usize = 64;
/// Messages set aside while a subscription is confirmed, in payload bytes.
const SET_ASIDE_BYTES: usize = 4 << 20;

pub(super) enum Link {
    Single(Single),
    Sharded(Sharded),
}

pub(super) struct Single {
    sink: PubSubSink,
    messages: PubSubStream,
    commands: MultiplexedConnection,
}

pub(super) struct Sharded {
    cluster: Arc<Cluster>,
    shards: HashMap<Arc<str>, ShardLink>,
    /// Each subscribed room, and the node it is subscribed on.
    subscribed: HashMap<Arc<str>, Arc<str>>,
    /// Rooms with members here and no subscription, to subscribe again.
    stranded: HashSet<Arc<str>>,
    /// The watcher's looks at the table the room task has followed.
    seen_looks: u64,
    /// From every node's reader; the senders are clones of `events_sender`.
    events: mpsc::Receiver<ShardEvent>,
    /// Events taken out while a subscription was confirmed, and their payloads' bytes.
    set_aside: VecDeque<ShardEvent>,
    set_aside_bytes: usize,
    events_sender: mpsc::Sender<ShardEvent>,
    /// Numbers each node connection, so a late report from a replaced one is ignored.
    serials: u64,
}

/// What came in on pub/sub.
pub(super) enum Incoming {
    Message(redis::Msg),
    Shard {
        channel: String,
        payload: Vec<u8>,
    },
    /// Something the link took care of itself (a room stranded, say).
    Handled,
    /// The one pub/sub connection closed.
    Closed,
}

impl Link {
    pub(super) async fn single(client: &Client) -> RedisResult<Link> {
        let pubsub = timeout(REDIS_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| timed_out())??;
        let (sink, messages) = pubsub.split();
        let commands = connect(client).await?;
        Ok(Link::Single(Single {
            sink,
            messages,
            commands,
        }))
    }

    /// Learns the slot table; nodes are connected as rooms need them.
    pub(super) async fn sharded(cluster: Arc<Cluster>) -> RedisResult<Link> {
        cluster.refresh().await?;
        let (events_sender, events) = mpsc::channel(SHARD_EVENTS);
        Ok(Link::Sharded(Sharded {
            cluster,
            shards: HashMap::new(),
            subscribed: HashMap::new(),
            stranded: HashSet::new(),
            seen_looks: 0,
            events,
            set_aside: VecDeque::new(),
            set_aside_bytes: 0,
            events_sender,
            serials: 0,
        }))
    }

    /// Subscribes `room`, once its node confirms.
    pub(super) async fn subscribe(&mut self, room: &Arc<str>) -> RedisResult<()> {
        match self {
            Link::Single(link) => {
                let subscribe = link.sink.subscribe(wire::channel(room));
                timeout(REDIS_TIMEOUT, subscribe)
                    .await
                    .map_err(|_| timed_out())?
            }
            Link::Sharded(link) => link.subscribe(room).await,
        }
    }

    pub(super) async fn unsubscribe(&mut self, room: &str) -> RedisResult<()> {
        match self {
            Link::Single(link) => {
                let unsubscribe = link.sink.unsubscribe(wire::channel(room));
                timeout(REDIS_TIMEOUT, unsubscribe)
                    .await
                    .map_err(|_| timed_out())?
            }
            Link::Sharded(link) => {
                link.unsubscribe(room).await;
                Ok(())
            }
        }
    }

    /// A command connection for `room`'s keys.
    pub(super) async fn commands(&self, room: &str) -> RedisResult<MultiplexedConnection> {
        match self {
            Link::Single(link) => Ok(link.commands.clone()),
            Link::Sharded(link) => link.cluster.connection_for(room).await,
        }
    }

    /// `rooms` grouped by the connection their keys are on (one group with one Redis);
    /// rooms of a node that cannot be reached now are left out.
    pub(super) async fn by_node(
        &self,
        rooms: Vec<Arc<str>>,
    ) -> Vec<(MultiplexedConnection, Vec<Arc<str>>)> {
        let link = match self {
            Link::Single(link) => return vec![(link.commands.clone(), rooms)],
            Link::Sharded(link) => link,
        };
        let groups = link.cluster.by_owner(rooms, |room| room);
        let mut connected = Vec::new();
        for (node, group) in groups {
            let Some(node) = node else { continue };
            if let Ok(connection) = link.cluster.connection(&node).await {
                connected.push((connection, group));
            }
        }
        connected
    }

    pub(super) async fn next(&mut self) -> Incoming {
        match self {
            Link::Single(link) => match link.messages.next().await {
                Some(message) => Incoming::Message(message),
                None => Incoming::Closed,
            },
            Link::Sharded(link) => match link.next_event().await {
                // Only from the node the room is subscribed on now: a message still on its
                // way from the node it left is old news (the stream fills any gap).
                Some(ShardEvent::Message {
                    node,
                    channel,
                    payload,
                }) => match wire::room_of(&channel) {
                    Some(room) if link.subscribed.get(room) == Some(&node) => {
                        Incoming::Shard { channel, payload }
                    }
                    _ => Incoming::Handled,
                },
                Some(ShardEvent::Dropped { node, channel }) => {
                    link.dropped(&node, &channel);
                    Incoming::Handled
                }
                Some(ShardEvent::Lost { node, serial }) => {
                    if link
                        .shards
                        .get(&node)
                        .is_some_and(|shard| shard.serial == serial)
                    {
                        link.lose_node(&node);
                    }
                    Incoming::Handled
                }
                None => Incoming::Closed,
            },
        }
    }

    /// Checks every connection is alive; on a cluster a silent node strands its rooms
    /// rather than failing the link.
    pub(super) async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Link::Single(link) => timeout(REDIS_TIMEOUT, link.sink.ping::<Value>())
                .await
                .map_err(|_| timed_out())?
                .map(drop),
            Link::Sharded(link) => {
                link.ping_all().await;
                Ok(())
            }
        }
    }

    /// Whether pub/sub covers every room (always, with one Redis while connected).
    pub(super) fn is_whole(&self) -> bool {
        match self {
            Link::Single(_) => true,
            Link::Sharded(link) => link.stranded.is_empty() && link.cluster.is_healthy(),
        }
    }

    /// Whether the cluster's table and masters have been looked at yet (one Redis: yes).
    pub(super) fn has_looked(&self) -> bool {
        match self {
            Link::Single(_) => true,
            Link::Sharded(link) => link.cluster.looks() > 0,
        }
    }

    /// Whether the room task should look at the slot table and its stranded rooms.
    pub(super) fn needs_resettle(&self) -> bool {
        match self {
            Link::Single(_) => false,
            Link::Sharded(link) => {
                !link.stranded.is_empty()
                    || link.seen_looks != link.cluster.looks()
                    || !link.cluster.is_healthy()
            }
        }
    }

    pub(super) fn sharded_mut(&mut self) -> Option<&mut Sharded> {
        match self {
            Link::Single(_) => None,
            Link::Sharded(link) => Some(link),
        }
    }
}

impl Sharded {
    async fn subscribe(&mut self, room: &Arc<str>) -> RedisResult<()> {
        let channel = wire::channel(room);
        let mut owner = self.cluster.owner(room).ok_or_else(no_owner)?;
        // A stale table is found out by a MOVED refusal, which names the node to try; the
        // watcher learns the new table meanwhile.
        for first_try in [true, false] {
            let shard = self.shard(&owner).await?;
            let answer = match shard.subscribe(&channel).await {
                Ok(confirmation) => self.confirmed(confirmation).await,
                Err(error) => Err(error),
            };
            match answer {
                Ok(Ok(())) => {
                    self.subscribed.insert(Arc::clone(room), owner);
                    self.stranded.remove(room);
                    return Ok(());
                }
                Ok(Err(refusal)) if first_try && refusal.starts_with("MOVED") => {
                    self.cluster.refresh_soon();
                    match refusal.rsplit_once(' ') {
                        Some((_, node)) => owner = Arc::from(node),
                        None => return Err(no_owner()),
                    }
                }
                Ok(Err(refusal)) => {
                    let (code, detail) = refusal.split_once(' ').unwrap_or((&refusal, ""));
                    return Err(redis::make_extension_error(
                        code.into(),
                        Some(detail.into()),
                    ));
                }
                Err(error) => {
                    self.lose_node(&owner);
                    return Err(error.into());
                }
            }
        }
        Err(no_owner())
    }

    /// Waits for a subscription's answer. The node's reader may be waiting for room in the
    /// events queue, behind messages only this task takes out: they are set aside meanwhile,
    /// up to [`SET_ASIDE_BYTES`], and served first afterwards.
    async fn confirmed(
        &mut self,
        confirmation: Confirmation,
    ) -> std::io::Result<Result<(), String>> {
        let deadline = sleep(REDIS_TIMEOUT);
        tokio::pin!(deadline, confirmation);
        loop {
            tokio::select! {
                answer = &mut confirmation => {
                    return answer.map_err(|_| std::io::Error::other("the node's connection closed"));
                }
                Some(event) = self.events.recv(), if self.set_aside_bytes < SET_ASIDE_BYTES => {
                    if let ShardEvent::Message { payload, .. } = &event {
                        self.set_aside_bytes += payload.len();
                    }
                    self.set_aside.push_back(event);
                }
                _ = &mut deadline => return Err(std::io::ErrorKind::TimedOut.into()),
            }
        }
    }

    /// The next event: first those set aside while a subscription was confirmed.
    async fn next_event(&mut self) -> Option<ShardEvent> {
        match self.set_aside.pop_front() {
            Some(event) => {
                if let ShardEvent::Message { payload, .. } = &event {
                    self.set_aside_bytes -= payload.len();
                }
                Some(event)
            }
            None => self.events.recv().await,
        }
    }

    async fn unsubscribe(&mut self, room: &str) {
        self.stranded.remove(room);
        let Some(node) = self.subscribed.remove(room) else {
            return;
        };
        let Some(shard) = self.shards.get_mut(&node) else {
            return;
        };
        if shard.unsubscribe(&wire::channel(room)).await.is_err() {
            self.lose_node(&node);
        }
    }

    /// The pub/sub connection to `node`, opening it if there is none.
    async fn shard(&mut self, node: &Arc<str>) -> RedisResult<&mut ShardLink> {
        if !self.shards.contains_key(node) {
            // A node being reconnected is not waited for: its rooms stay stranded meanwhile.
            if self.cluster.is_down(node) {
                return Err(std::io::Error::from(std::io::ErrorKind::NotConnected).into());
            }
            self.serials += 1;
            let client = self.cluster.client(node)?;
            let events = self.events_sender.clone();
            let info = client.get_connection_info();
            let shard = ShardLink::open(Arc::clone(node), info, self.serials, events).await;
            let shard = shard.inspect_err(|_| self.cluster.forget(node))?;
            self.shards.insert(Arc::clone(node), shard);
        }
        Ok(self.shards.get_mut(node).expect("inserted above"))
    }

    /// Asks for the table to be learnt again (a node redirected or did not answer).
    pub(super) fn mark_stale(&self) {
        self.cluster.refresh_soon();
    }

    /// Notes that the room task has followed the watcher's latest look.
    pub(super) fn followed(&mut self) {
        self.seen_looks = self.cluster.looks();
    }

    /// Strands every subscribed room whose slot the table now puts on another node, after
    /// a refresh: a slot that moved without a word still reaches its rooms.
    pub(super) async fn follow_table(&mut self) {
        let moved: Vec<Arc<str>> = self
            .subscribed
            .iter()
            .filter(|(room, node)| self.cluster.owner(room).as_ref() != Some(*node))
            .map(|(room, _)| Arc::clone(room))
            .collect();
        for room in moved {
            self.unsubscribe(&room).await;
            self.stranded.insert(room);
        }
    }

    /// Up to `most` of the rooms to subscribe again, taken.
    pub(super) fn take_stranded(&mut self, most: usize) -> Vec<Arc<str>> {
        let taken: Vec<Arc<str>> = self.stranded.iter().take(most).cloned().collect();
        for room in &taken {
            self.stranded.remove(room);
        }
        taken
    }

    pub(super) fn strand(&mut self, room: Arc<str>) {
        self.stranded.insert(room);
    }

    /// The node gave up a channel: its room is subscribed again where its slot went.
    fn dropped(&mut self, node: &Arc<str>, channel: &str) {
        let Some(room) = wire::room_of(channel) else {
            return;
        };
        if self.subscribed.get(room) == Some(node) {
            let (room, _) = self.subscribed.remove_entry(room).expect("checked above");
            self.strand(room);
        }
    }

    fn lose_node(&mut self, node: &Arc<str>) {
        self.shards.remove(node);
        self.cluster.forget(node);
        let lost: Vec<Arc<str>> = self
            .subscribed
            .iter()
            .filter(|(_, on)| *on == node)
            .map(|(room, _)| Arc::clone(room))
            .collect();
        for room in lost {
            self.subscribed.remove(&room);
            self.strand(room);
        }
    }

    /// Pings every node with subscribed rooms, and closes the connections of the others.
    async fn ping_all(&mut self) {
        let nodes: Vec<Arc<str>> = self.shards.keys().cloned().collect();
        for node in nodes {
            let in_use = self.subscribed.values().any(|on| *on == node);
            let Some(shard) = self.shards.get_mut(&node) else {
                continue;
            };
            if !in_use {
                self.shards.remove(&node);
            } else if shard.ping().await.is_err() {
                self.lose_node(&node);
            }
        }
    }
}

fn timed_out() -> RedisError {
    std::io::Error::from(std::io::ErrorKind::TimedOut).into()
}
