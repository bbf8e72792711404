//! Redis Cluster: which node owns a room, a command connection per node, and the slot table,
//! learnt from the seed nodes and refreshed when a node answers `MOVED` or goes away.
//!
//! Everything about a room (its keys and its shard channel) lives in one slot, so a room
//! talks to one node at a time, as it talks to the one Redis otherwise. [shard] is the
//! pub/sub connection a subscriber keeps per node.
//!
//! A node that stops answering is marked down and reconnected in the background, with
//! backoff: until then its rooms fail at once, so neither the publisher nor the room task
//! waits on it while the other nodes' rooms carry on. The [watcher](Cluster::watch) learns
//! the table and pings every master in a task of its own, for the same reason.

pub(super) mod shard;
mod slots;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::{Client, ConnectionAddr, ConnectionInfo, RedisError, RedisResult, Value};
use tokio::sync::{Mutex as AsyncMutex, Notify, watch};
use tokio::time::{Instant, sleep, timeout};

use super::{REDIS_TIMEOUT, connect, next_backoff, stopping};
pub(super) use slots::SlotMap;
use slots::room_slot;

/// A refresh asked for within this long of the last one reuses its answer, so a burst of
/// `MOVED` replies costs one `CLUSTER SLOTS`.
const REFRESH_AT_MOST_EVERY: Duration = Duration::from_millis(100);
/// A master that does not answer a health ping within this is marked down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the watcher looks at the table and the masters unasked...
const LOOK_EVERY: Duration = Duration::from_secs(2);
/// ...and the least time between two looks, however often it is asked.
const LOOK_GAP: Duration = Duration::from_millis(100);

pub(super) struct Cluster {
    seeds: Vec<Client>,
    /// The slot table; `None` until a node first answers.
    map: RwLock<Option<Arc<SlotMap>>>,
    /// Each node met, `host:port`, with its command connection, or down.
    nodes: Mutex<HashMap<Arc<str>, Node>>,
    /// One refresh at a time, and when the last one ended.
    refreshed: AsyncMutex<Option<Instant>>,
    /// Asks the watcher to look now.
    wake: Notify,
    /// Whether every slot had a master that answered, at the watcher's last look...
    healthy: AtomicBool,
    /// ...and how many looks it has taken, so the room task knows when to follow the table.
    looks: AtomicU64,
}

enum Node {
    Up(MultiplexedConnection),
    /// A task is reconnecting it.
    Down,
}

impl Cluster {
    pub(super) fn new(seeds: Vec<Client>) -> Cluster {
        Cluster {
            seeds,
            map: RwLock::new(None),
            nodes: Mutex::new(HashMap::new()),
            refreshed: AsyncMutex::new(None),
            wake: Notify::new(),
            healthy: AtomicBool::new(false),
            looks: AtomicU64::new(0),
        }
    }

    /// Learns the slot table and pings every master, every [`LOOK_EVERY`] or when asked
    /// ([`refresh_soon`](Cluster::refresh_soon)), until the broker stops.
    pub(super) async fn watch(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        loop {
            let healthy = match self.refresh().await {
                Ok(map) => map.is_complete() && self.check_masters().await,
                Err(_) => false,
            };
            self.healthy.store(healthy, Ordering::Release);
            self.looks.fetch_add(1, Ordering::Release);
            tokio::select! {
                _ = stopping(&mut stopped) => return,
                _ = async {
                    sleep(LOOK_GAP).await;
                    tokio::select! {
                        _ = sleep(LOOK_EVERY - LOOK_GAP) => {}
                        _ = self.wake.notified() => {}
                    }
                } => {}
            }
        }
    }

    /// Asks the watcher to look at the table now (a node redirected or did not answer).
    pub(super) fn refresh_soon(&self) {
        self.wake.notify_one();
    }

    /// Whether every slot had a master that answered, when last looked at.
    pub(super) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub(super) fn looks(&self) -> u64 {
        self.looks.load(Ordering::Acquire)
    }

    pub(super) fn map(&self) -> Option<Arc<SlotMap>> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The node that owns `room`'s slot, as far as the table knows.
    pub(super) fn owner(&self, room: &str) -> Option<Arc<str>> {
        self.map()?.owner(room_slot(room)).cloned()
    }

    /// Asks the known nodes, then the seeds, for the slot table; the first answer wins.
    pub(super) async fn refresh(self: &Arc<Self>) -> RedisResult<Arc<SlotMap>> {
        let mut refreshed = self.refreshed.lock().await;
        if let (Some(at), Some(map)) = (*refreshed, self.map())
            && at.elapsed() < REFRESH_AT_MOST_EVERY
        {
            return Ok(map);
        }
        // Masters first; a replica may have taken over from one that is gone.
        let known = self
            .map()
            .map(|map| [map.masters(), map.replicas().to_vec()].concat())
            .unwrap_or_default();
        let seeds = self
            .seeds
            .iter()
            .map(|seed| seed.get_connection_info().addr().to_string());
        let mut last_error = None;
        let mut asked: Vec<Arc<str>> = Vec::new();
        for node in known.into_iter().chain(seeds.map(Arc::from)) {
            if asked.contains(&node) {
                continue;
            }
            asked.push(Arc::clone(&node));
            match self.slots_from(&node).await {
                // A node that serves no slot (new, or reset) knows nothing worth taking.
                Ok(map) if map.masters().is_empty() => {
                    last_error = Some(std::io::Error::other("a node that serves no slot").into());
                }
                Ok(map) => {
                    let map = Arc::new(map);
                    *self.map.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&map));
                    *refreshed = Some(Instant::now());
                    return Ok(map);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("no cluster seed").into()))
    }

    async fn slots_from(self: &Arc<Self>, node: &Arc<str>) -> RedisResult<SlotMap> {
        let mut connection = self.connection(node).await?;
        let mut ask = redis::cmd("CLUSTER");
        ask.arg("SLOTS");
        let reply = match timeout(REDIS_TIMEOUT, ask.query_async::<Value>(&mut connection)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(error)) => {
                self.forget(node);
                return Err(error);
            }
            Err(_) => {
                self.forget(node);
                return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
            }
        };
        SlotMap::parse(reply, node)
            .ok_or_else(|| std::io::Error::other("CLUSTER SLOTS: an unexpected reply").into())
    }

    /// The command connection to `node`, connecting if it is new; an error at once if it is
    /// down.
    pub(super) async fn connection(
        self: &Arc<Self>,
        node: &Arc<str>,
    ) -> RedisResult<MultiplexedConnection> {
        match self.lock_nodes().get(node) {
            Some(Node::Up(connection)) => return Ok(connection.clone()),
            Some(Node::Down) => return Err(node_down()),
            None => {}
        }
        match connect(&self.client(node)?).await {
            Ok(connection) => {
                let up = Node::Up(connection.clone());
                self.lock_nodes().insert(Arc::clone(node), up);
                Ok(connection)
            }
            Err(error) => {
                self.forget(node);
                Err(error)
            }
        }
    }

    /// Pings every master at once; one that does not answer within [`CHECK_TIMEOUT`] is
    /// marked down. True when all answered.
    pub(super) async fn check_masters(self: &Arc<Self>) -> bool {
        let Some(map) = self.map() else {
            return false;
        };
        let pings = map.masters().into_iter().map(|node| async move {
            let ping = async {
                let mut connection = self.connection(&node).await?;
                redis::cmd("PING").query_async::<()>(&mut connection).await
            };
            let answered = matches!(timeout(CHECK_TIMEOUT, ping).await, Ok(Ok(())));
            if !answered {
                self.forget(&node);
            }
            answered
        });
        join_all(pings).await.into_iter().all(|answered| answered)
    }

    pub(super) fn is_down(&self, node: &str) -> bool {
        matches!(self.lock_nodes().get(node), Some(Node::Down))
    }

    /// The connection to the node that owns `room`, learning the table first if need be.
    pub(super) async fn connection_for(
        self: &Arc<Self>,
        room: &str,
    ) -> RedisResult<MultiplexedConnection> {
        let owner = match self.owner(room) {
            Some(owner) => owner,
            None => {
                self.refresh().await?;
                self.owner(room).ok_or_else(no_owner)?
            }
        };
        self.connection(&owner).await
    }

    /// `items` grouped by the node that owns each one's room, in their order; `None` groups
    /// the rooms whose slot has no master now.
    pub(super) fn by_owner<T>(&self, items: Vec<T>, room: impl Fn(&T) -> &str) -> ByOwner<T> {
        let map = self.map();
        let mut groups: ByOwner<T> = Vec::new();
        for item in items {
            let owner = map
                .as_ref()
                .and_then(|map| map.owner(room_slot(room(&item))).cloned());
            match groups.iter_mut().find(|(node, _)| *node == owner) {
                Some((_, group)) => group.push(item),
                None => groups.push((owner, vec![item])),
            }
        }
        groups
    }

    /// A node did not answer: it is down until a background task connects to it again. One
    /// that is no longer a master or a seed is let go instead, once a try fails.
    pub(super) fn forget(self: &Arc<Self>, node: &str) {
        let node: Arc<str> = Arc::from(node);
        let was = self.lock_nodes().insert(Arc::clone(&node), Node::Down);
        if matches!(was, Some(Node::Down)) {
            return;
        }
        let cluster = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut wait = Duration::ZERO;
            loop {
                wait = next_backoff(wait);
                sleep(wait).await;
                let Some(cluster) = cluster.upgrade() else {
                    return;
                };
                let client = cluster.client(&node);
                match client {
                    Ok(client) => match connect(&client).await {
                        Ok(connection) => {
                            cluster.lock_nodes().insert(node, Node::Up(connection));
                            return;
                        }
                        Err(_) if cluster.knows(&node) => {}
                        Err(_) => break,
                    },
                    Err(_) => break,
                }
            }
            if let Some(cluster) = cluster.upgrade() {
                cluster.lock_nodes().remove(&node);
            }
        });
    }

    /// Whether `node` is a master in the table or a seed.
    fn knows(&self, node: &str) -> bool {
        let master = self
            .map()
            .is_some_and(|map| map.masters().iter().any(|m| &**m == node));
        master
            || self
                .seeds
                .iter()
                .any(|seed| seed.get_connection_info().addr().to_string() == node)
    }

    /// A client for `node` with the first seed's credentials and settings.
    pub(super) fn client(&self, node: &str) -> RedisResult<Client> {
        let (host, port) = node
            .rsplit_once(':')
            .and_then(|(host, port)| {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Some((host.to_string(), port.parse().ok()?))
            })
            .ok_or_else(|| std::io::Error::other("a node address without a port"))?;
        let template: &ConnectionInfo = self.seeds[0].get_connection_info();
        Client::open(template.clone().set_addr(ConnectionAddr::Tcp(host, port)))
    }

    fn lock_nodes(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Node>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Items of rooms, grouped by the node their slot is on.
pub(super) type ByOwner<T> = Vec<(Option<Arc<str>>, Vec<T>)>;

/// A node that is being reconnected.
fn node_down() -> RedisError {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "the cluster node is down").into()
}

/// A slot no master serves (mid-failover): like a lost connection, it passes.
pub(super) fn no_owner() -> RedisError {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "no cluster node owns the slot",
    )
    .into()
}
