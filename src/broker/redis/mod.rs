//! The Redis broker: every instance sees every room, in one order per room.
//!
//! Two tasks own the long-lived Redis connections. The [publisher] sends held publishes
//! from the [fair queue](queue) through one script that assigns the room's next seq,
//! appends to its bounded stream and publishes. The [room task](subscriber) owns the pub/sub
//! connection, subscribed only to rooms with local members; each [room] fans a message out
//! once, and any gap is filled from the stream. [scripts] holds the Lua, [wire] the names
//! and the payload. Replays read the stream a page at a time on a shared connection.
//!
//! On a Redis Cluster ([cluster]) the same happens per room on the node that owns its slot:
//! publishes go out in one pipeline per node, and the room task keeps one sharded pub/sub
//! connection per node it needs.

mod cluster;
mod presence;
mod publisher;
mod queue;
mod room;
mod scripts;
mod subscriber;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError};
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};

use super::feed::WeakFeed;
use super::ledger::FrameLedger;
use super::{
    Accepted, Members, Membership, PAGE_BYTES, PAGE_FRAMES, Page, PageFuture, PublishFuture,
    Publishing, Resume, Unavailable, Visitor,
};
use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::protocol::ChatParts;
use publisher::Publisher;
use queue::{Full, Held, HoldQueue, Origin};
use subscriber::RoomTask;

/// Every Redis call gives up after this, so a stalled Redis reads as an outage, not a hang.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The handle the server holds: joins go to the room task, `close` stops both tasks.
pub struct RedisBroker {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    tasks: AsyncMutex<Vec<JoinHandle<()>>>,
}

/// Where Redis is: one server, or a cluster learnt from its seeds.
pub enum Backend {
    Single(Client),
    Cluster(Vec<Client>),
}

/// The running form of [`Backend`].
enum Redis {
    Single(Client),
    Cluster(Arc<cluster::Cluster>),
}

/// What the tasks and every member share.
struct Inner {
    redis: Redis,
    /// To the room task.
    commands: mpsc::Sender<Command>,
    /// Publishes waiting for the publisher; bounded, so an outage holds at most so many.
    queue: HoldQueue,
    /// For replay pages, shared by every session; connected on first use (one Redis).
    reads: AsyncMutex<Option<MultiplexedConnection>>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// Frames fanned out to members: what feeds hold (and deliveries on their way).
    frames: Arc<FrameLedger>,
    /// Frames read for replays, which each session holds while it writes them.
    pages: Arc<FrameLedger>,
    pubsub_up: AtomicBool,
    publisher_up: AtomicBool,
    send_queue: usize,
    send_queue_bytes: usize,
    max_backlog_bytes: usize,
    presence_linger_ms: u64,
    presence_list: usize,
    presence_events_max: u64,
    /// A connection's presence entry lives this long without a refresh.
    presence_ttl_ms: u64,
    history: usize,
    history_bytes: usize,
    room_ttl_secs: u64,
    /// The SHA1 that EVALSHA names the publish script by.
    publish_hash: String,
    /// Unique per process, so epochs and publish numbers never collide across instances.
    instance: String,
    epochs_made: AtomicU64,
}

enum Command {
    Join {
        room: String,
        resume: Option<Resume>,
        visitor: Option<Visitor>,
        reply: oneshot::Sender<Result<Membership, Unavailable>>,
        inner: Arc<Inner>,
    },
    Leave {
        room: Arc<str>,
        id: u64,
    },
}

/// A session's place in a Redis-backed room; leaves it when dropped.
pub struct Member {
    inner: Arc<Inner>,
    room: Arc<str>,
    id: u64,
    /// This member's own feed, for the publisher to report a failed publish through.
    feed: WeakFeed,
}

impl RedisBroker {
    /// Starts the room task and the publisher; they connect (and reconnect) on their own.
    pub fn start(
        backend: Backend,
        config: &Config,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> RedisBroker {
        let (commands, command_queue) = mpsc::channel(1024);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let redis = match backend {
            Backend::Single(client) => Redis::Single(client),
            Backend::Cluster(seeds) => Redis::Cluster(Arc::new(cluster::Cluster::new(seeds))),
        };
        let inner = Arc::new(Inner {
            redis,
            commands,
            queue: HoldQueue::new(config.publish_queue, config.publish_queue_bytes),
            reads: AsyncMutex::new(None),
            health,
            metrics,
            frames: Arc::new(FrameLedger::default()),
            pages: Arc::new(FrameLedger::default()),
            pubsub_up: AtomicBool::new(false),
            publisher_up: AtomicBool::new(false),
            send_queue: config.send_queue,
            send_queue_bytes: config.send_queue_bytes,
            max_backlog_bytes: config.backlog_budget_bytes,
            presence_linger_ms: config.presence_linger.as_millis() as u64,
            presence_list: config.presence_list,
            presence_events_max: config.presence_events_max,
            presence_ttl_ms: config.presence_ttl.as_millis() as u64,
            history: config.history,
            history_bytes: config.history_bytes,
            room_ttl_secs: config.room_ttl.as_secs().max(1),
            publish_hash: redis::Script::new(scripts::PUBLISH).get_hash().to_string(),
            instance: format!("{:x}.{:x}", now.as_micros(), std::process::id()),
            epochs_made: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let rooms = RoomTask::new(Arc::clone(&inner));
        let publisher = Publisher::new(Arc::clone(&inner));
        let mut tasks = vec![
            tokio::spawn(rooms.run(command_queue, stopped.clone())),
            tokio::spawn(publisher.run(stopped.clone())),
        ];
        if let Redis::Cluster(cluster) = &inner.redis {
            tasks.push(tokio::spawn(Arc::clone(cluster).watch(stopped)));
        }
        RedisBroker {
            inner,
            stop,
            tasks: AsyncMutex::new(tasks),
        }
    }

    pub async fn join(
        &self,
        room: &str,
        resume: Option<Resume>,
        visitor: Option<Visitor>,
    ) -> Result<Membership, Unavailable> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Join {
            room: room.to_string(),
            resume,
            visitor,
            reply,
            inner: Arc::clone(&self.inner),
        };
        match timeout(REDIS_TIMEOUT, self.inner.commands.send(command)).await {
            Ok(Ok(())) => answer.await.unwrap_or(Err(Unavailable)),
            _ => Err(Unavailable),
        }
    }

    /// Sends what is still held and stops both tasks; the caller bounds how long it may take.
    pub async fn close(&self) {
        self.stop.send_replace(true);
        self.inner.queue.ready.notify_one();
        for task in self.tasks.lock().await.drain(..) {
            let _ = task.await;
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.redis, Redis::Cluster(_))
    }

    pub fn frame_bytes(&self) -> usize {
        self.inner.frames.alive()
    }

    /// Who is in a room, over every instance.
    pub async fn presence(&self, room: &str, list: usize) -> Result<Members, Unavailable> {
        let mut connection = self.inner.reader(room).await.map_err(|_| Unavailable)?;
        match timeout(REDIS_TIMEOUT, presence::read(&mut connection, room, list)).await {
            Ok(Ok(members)) => Ok(members),
            _ => Err(Unavailable),
        }
    }

    /// A key unique to this request, for API publishes that came without one: a publish
    /// retried after a lost reply is still applied once.
    pub fn fresh_key(&self) -> String {
        format!("api.{}", self.inner.fresh_epoch())
    }

    /// Publishes for the API, without a membership, and waits for the seq. Refused at once
    /// while Redis is away rather than held: the caller is waiting on the answer.
    pub async fn publish(
        &self,
        room: &str,
        chat: ChatParts,
        idempotency: String,
    ) -> Result<Accepted, Unavailable> {
        if !self.inner.health.is_broker_up() {
            return Err(Unavailable);
        }
        let (reply, answer) = oneshot::channel();
        let held = Held {
            room: Arc::from(room),
            chat,
            origin: Origin::Api { reply, idempotency },
            number: 0,
            previous: 0,
            failing_since: None,
        };
        self.inner.queue.push(held).map_err(|_| Unavailable)?;
        match timeout(REDIS_TIMEOUT + publisher::RETRY_FOR, answer).await {
            Ok(Ok(outcome)) => outcome,
            _ => Err(Unavailable),
        }
    }
}

impl Inner {
    fn fresh_epoch(&self) -> String {
        let serial = self.epochs_made.fetch_add(1, Ordering::Relaxed);
        format!("{}.{serial:x}", self.instance)
    }

    /// How the scripts publish: sharded on a cluster, so a message goes only to the nodes
    /// of its slot, not to every node.
    fn publish_command(&self) -> &'static str {
        match self.redis {
            Redis::Single(_) => "PUBLISH",
            Redis::Cluster(_) => "SPUBLISH",
        }
    }

    fn set_up(&self, flag: &AtomicBool, up: bool) {
        flag.store(up, Ordering::Release);
        let both =
            self.pubsub_up.load(Ordering::Acquire) && self.publisher_up.load(Ordering::Acquire);
        self.health.set_broker_up(both);
    }

    /// A connection for reading `room`, connecting if there is none.
    async fn reader(&self, room: &str) -> Result<MultiplexedConnection, RedisError> {
        let client = match &self.redis {
            Redis::Single(client) => client,
            Redis::Cluster(cluster) => return cluster.connection_for(room).await,
        };
        let mut reads = self.reads.lock().await;
        if let Some(connection) = reads.as_ref() {
            return Ok(connection.clone());
        }
        let connection = connect(client).await?;
        *reads = Some(connection.clone());
        Ok(connection)
    }

    /// Drops the connection a read failed on, so the next one connects afresh.
    async fn forget_reader(&self, room: &str) {
        match &self.redis {
            Redis::Single(_) => *self.reads.lock().await = None,
            Redis::Cluster(cluster) => {
                if let Some(node) = cluster.owner(room) {
                    cluster.forget(&node);
                }
            }
        }
    }
}

/// Pushes `held` once the queue has room, for at most [`REDIS_TIMEOUT`]; refused if Redis
/// goes away meanwhile.
fn wait_for_room(inner: Arc<Inner>, mut held: Held) -> PublishFuture {
    Box::pin(async move {
        let queue = &inner.queue;
        let deadline = Instant::now() + REDIS_TIMEOUT;
        let queued = loop {
            let space = queue.space.notified();
            match queue.push(held) {
                Ok(()) => break true,
                Err(Full(back)) if inner.health.is_broker_up() => {
                    held = *back;
                    if timeout_at(deadline, space).await.is_err() {
                        break false;
                    }
                }
                Err(_) => break false,
            }
        };
        inner.metrics.publishes_held_now(queue.held());
        if queued { Ok(()) } else { Err(Unavailable) }
    })
}

impl Member {
    /// Queues the publish. While Redis is up a full queue holds the sender back for a
    /// moment; while it is away the publish is refused at once.
    pub fn publish(&self, chat: ChatParts) -> Publishing {
        let held = Held {
            room: Arc::clone(&self.room),
            chat,
            origin: Origin::Member(self.feed.clone()),
            number: 0,
            previous: 0,
            failing_since: None,
        };
        let queue = &self.inner.queue;
        let publishing = match queue.push(held) {
            Ok(()) => Publishing::Accepted,
            Err(Full(back)) if self.inner.health.is_broker_up() => {
                Publishing::Waiting(wait_for_room(Arc::clone(&self.inner), *back))
            }
            Err(_) => Publishing::Refused,
        };
        self.inner.metrics.publishes_held_now(queue.held());
        publishing
    }

    /// The next frames of a replay, read from the room's stream.
    pub fn replay_page(&self, epoch: String, after: u64, until: u64) -> PageFuture {
        let inner = Arc::clone(&self.inner);
        let room = Arc::clone(&self.room);
        Box::pin(async move { read_page(&inner, &room, &epoch, after, until).await })
    }
}

async fn read_page(
    inner: &Inner,
    room: &str,
    epoch: &str,
    after: u64,
    until: u64,
) -> Result<Page, Unavailable> {
    // Pages are copies; while they hold too much, resumers are told to come back later.
    if inner.pages.alive() > inner.max_backlog_bytes {
        return Err(Unavailable);
    }
    let mut connection = inner.reader(room).await.map_err(|_| Unavailable)?;
    let read = scripts::page(
        &mut connection,
        inner,
        room,
        epoch,
        after,
        until,
        (PAGE_FRAMES, PAGE_BYTES),
    );
    let entries = match timeout(REDIS_TIMEOUT, read).await {
        Ok(Ok(entries)) => entries,
        Ok(Err(error)) if !is_outage(&error) => return Err(Unavailable),
        _ => {
            inner.forget_reader(room).await;
            return Err(Unavailable);
        }
    };
    // The room moved to another epoch meanwhile: its live feed says so; the replay ends.
    let Some(entries) = entries else {
        return Ok(Page {
            last: after,
            ..Page::default()
        });
    };
    let gap = entries.first().is_some_and(|(seq, _)| *seq > after + 1)
        || (entries.is_empty() && after < until);
    let last = entries.last().map_or(after, |(seq, _)| *seq);
    Ok(Page {
        frames: entries.into_iter().map(|(_, frame)| frame).collect(),
        last,
        gap,
    })
}

impl Drop for Member {
    fn drop(&mut self) {
        // Best effort: if the queue is full, the room task's sweep finds the closed feed.
        let leave = Command::Leave {
            room: Arc::clone(&self.room),
            id: self.id,
        };
        let _ = self.inner.commands.try_send(leave);
    }
}

/// A lost or stalled connection, as opposed to Redis answering with an error.
/// Redis did not answer (the connection broke, timed out, or spoke nonsense), as opposed to
/// answering with an error: one refused command (out of memory, say) is not an outage, also
/// when it fails a pipeline.
fn is_outage(error: &RedisError) -> bool {
    !matches!(
        error.kind(),
        ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::UnexpectedReturnType
    )
}

async fn connect(client: &Client) -> Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).clamp(Duration::from_millis(50), MAX_BACKOFF)
}

/// Resolves once the broker is closing.
async fn stopping(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unanswered_command_is_an_outage() {
        let broken = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        let timed_out = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(is_outage(&broken) && is_outage(&timed_out));
        let refused = RedisError::from((ErrorKind::Extension, "OOM", "used > maxmemory".into()));
        assert!(!is_outage(&refused), "an answer is not an outage");
    }
}
