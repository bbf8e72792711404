//! The Redis broker: every instance sees every room, in one order per room.
//!
//! Two tasks own the Redis connections. The [publisher] sends publishes in order through one
//! script that assigns the room's next seq, appends to its capped stream and publishes; while
//! Redis is away it holds them in a bounded queue. The [room task](rooms) owns the pub/sub
//! connection, subscribed only to rooms with local members, fans each message out once, and
//! fills any gap in a room's seqs from its stream after a reconnect. [scripts] holds the Lua.

mod publisher;
mod rooms;
mod scripts;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::{Membership, Resume, Unavailable};
use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::protocol::ChatParts;
use publisher::Publisher;
use rooms::RoomTask;

/// Every Redis call gives up after this, so a stalled Redis reads as an outage, not a hang.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The handle the server holds: joins go to the room task, `close` stops both tasks.
pub struct RedisBroker {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    tasks: AsyncMutex<Vec<JoinHandle<()>>>,
}

/// What the tasks and every member share.
struct Inner {
    /// To the room task.
    commands: mpsc::Sender<Command>,
    /// To the publisher; bounded, so an outage holds at most this many publishes.
    publishes: mpsc::Sender<Publish>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    pubsub_up: AtomicBool,
    publisher_up: AtomicBool,
    send_queue: usize,
    history: usize,
    room_ttl_secs: u64,
    /// Unique per process, so epochs and publish counters never collide across instances.
    instance: String,
    epochs_made: AtomicU64,
}

enum Command {
    Join {
        room: String,
        resume: Option<Resume>,
        reply: oneshot::Sender<Result<Membership, Unavailable>>,
        inner: Arc<Inner>,
    },
    Leave {
        room: Arc<str>,
        id: u64,
    },
}

struct Publish {
    room: Arc<str>,
    chat: ChatParts,
}

/// A session's place in a Redis-backed room; leaves it when dropped.
pub struct Member {
    inner: Arc<Inner>,
    room: Arc<str>,
    id: u64,
}

impl RedisBroker {
    /// Starts the room task and the publisher; they connect (and reconnect) on their own.
    pub fn start(
        client: Client,
        config: &Config,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> RedisBroker {
        let (commands, command_queue) = mpsc::channel(1024);
        let (publishes, publish_queue) = mpsc::channel(config.publish_queue);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let inner = Arc::new(Inner {
            commands,
            publishes,
            health,
            metrics,
            pubsub_up: AtomicBool::new(false),
            publisher_up: AtomicBool::new(false),
            send_queue: config.send_queue,
            history: config.history,
            room_ttl_secs: config.room_ttl.as_secs().max(1),
            instance: format!("{:x}.{:x}", now.as_micros(), std::process::id()),
            epochs_made: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let rooms = RoomTask::new(Arc::clone(&inner), client.clone());
        let publisher = Publisher::new(Arc::clone(&inner), client);
        let tasks = vec![
            tokio::spawn(rooms.run(command_queue, stopped.clone())),
            tokio::spawn(publisher.run(publish_queue, stopped)),
        ];
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
    ) -> Result<Membership, Unavailable> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Join {
            room: room.to_string(),
            resume,
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
        for task in self.tasks.lock().await.drain(..) {
            let _ = task.await;
        }
    }
}

impl Inner {
    fn fresh_epoch(&self) -> String {
        let serial = self.epochs_made.fetch_add(1, Ordering::Relaxed);
        format!("{}.{serial:x}", self.instance)
    }

    fn set_up(&self, flag: &AtomicBool, up: bool) {
        flag.store(up, Ordering::Release);
        let both =
            self.pubsub_up.load(Ordering::Acquire) && self.publisher_up.load(Ordering::Acquire);
        self.health.set_broker_up(both);
    }
}

impl Member {
    pub async fn publish(&self, chat: ChatParts) -> Result<(), Unavailable> {
        let publish = Publish {
            room: Arc::clone(&self.room),
            chat,
        };
        let queue = &self.inner.publishes;
        // While Redis is up a full queue is back-pressure; while it is away, only the held
        // publishes may wait, and one past the bound is refused at once.
        let sent = if self.inner.health.is_broker_up() {
            matches!(
                timeout(REDIS_TIMEOUT, queue.send(publish)).await,
                Ok(Ok(()))
            )
        } else {
            queue.try_send(publish).is_ok()
        };
        let held = queue.max_capacity() - queue.capacity();
        self.inner.metrics.publishes_held_now(held);
        if sent { Ok(()) } else { Err(Unavailable) }
    }
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
