//! The Redis broker: every instance sees every room, in one order per room.
//!
//! Two tasks own the Redis connections. The publisher sends publishes in order through one
//! script that assigns the room's next seq, appends to its capped stream and publishes; while
//! Redis is away it holds them in a bounded queue. The room task owns the pub/sub connection,
//! subscribed only to rooms with local members, fans each message out once, and fills any gap
//! in a room's seqs from its stream after a reconnect.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client, RedisError, Value};
use serde_json::json;
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, interval, sleep, timeout};

use super::{Delivery, Frame, MemberHandle, Membership, Resume, Unavailable, plan_replay};
use crate::config::Config;
use crate::health::Health;
use crate::log;
use crate::metrics::{self, Metrics};
use crate::protocol::{self, ResetReason};

/// Assigns the next seq, appends to the capped stream and publishes, all or nothing.
/// A publish retried after a lost reply is recognised by its instance counter and skipped.
/// KEYS: seq, epoch, log, publishers. ARGV: message as a JSON string, fresh epoch, history
/// length, ttl seconds, channel, instance id, instance counter.
const PUBLISH_SCRIPT: &str = r#"
local last = tonumber(redis.call('HGET', KEYS[4], ARGV[6]) or '0')
if tonumber(ARGV[7]) <= last then return 0 end
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch)
  redis.call('DEL', KEYS[1], KEYS[3])
end
local seq = redis.call('INCR', KEYS[1])
local frame = '{"message":' .. ARGV[1] .. ',"seq":' .. seq .. '}'
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[3], seq .. '-0', 'f', frame)
end
redis.call('HSET', KEYS[4], ARGV[6], ARGV[7])
-- Refresh the idle expiry once half of it has passed, not on every publish.
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[4]) / 2 then
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
end
redis.call('PUBLISH', ARGV[5], seq .. ' ' .. epoch .. ' ' .. frame)
return seq
"#;

/// The room's epoch (created if the room has none), latest seq, and the stream entries a
/// reader at `since` needs: from `since + 1`, or all of them if `since` is from another epoch.
/// KEYS: seq, epoch, log. ARGV: fresh epoch, ttl seconds, since (-1: none), the reader's epoch.
const SNAPSHOT_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch, 'EX', ARGV[2])
  redis.call('DEL', KEYS[1], KEYS[3])
end
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local since = tonumber(ARGV[3])
local entries = {}
if since >= 0 and since < seq then
  local from = string.format('%d', since + 1)
  if ARGV[4] ~= '' and ARGV[4] ~= epoch then from = '-' end
  entries = redis.call('XRANGE', KEYS[3], from, '+')
elseif since > seq or (ARGV[4] ~= '' and ARGV[4] ~= epoch) then
  entries = redis.call('XRANGE', KEYS[3], '-', '+')
end
return {epoch, seq, entries}
"#;

/// Every Redis call gives up after this, so a stalled Redis reads as an outage, not a hang.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Publishes sent in one pipeline.
const MAX_BATCH: usize = 128;
/// How often the room task drops closed members and pings the pub/sub connection.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A Redis connection that lasted this long was not flapping.
const STABLE_AFTER: Duration = Duration::from_secs(5);

pub struct RedisBroker {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    tasks: AsyncMutex<Vec<JoinHandle<()>>>,
}

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
    /// The message already encoded as a JSON string.
    message_json: String,
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
        url: &str,
        config: &Config,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Result<RedisBroker, RedisError> {
        let client = Client::open(url)?;
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
        let rooms = RoomTask {
            inner: Arc::clone(&inner),
            client: client.clone(),
            rooms: HashMap::new(),
        };
        let publisher = Publisher {
            inner: Arc::clone(&inner),
            client,
            script_hash: redis::Script::new(PUBLISH_SCRIPT).get_hash().to_string(),
        };
        let tasks = vec![
            tokio::spawn(rooms.run(command_queue, stopped.clone())),
            tokio::spawn(publisher.run(publish_queue, stopped)),
        ];
        Ok(RedisBroker {
            inner,
            stop,
            tasks: AsyncMutex::new(tasks),
        })
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
    pub async fn publish(&self, message: &str) -> Result<(), Unavailable> {
        let publish = Publish {
            room: Arc::clone(&self.room),
            message_json: serde_json::to_string(message).map_err(|_| Unavailable)?,
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
        let held = (queue.max_capacity() - queue.capacity()) as u64;
        self.inner
            .metrics
            .publishes_held
            .store(held, Ordering::Relaxed);
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

fn keys(room: &str) -> [String; 4] {
    let base = format!("roomcast:room:{{{room}}}");
    [
        format!("{base}:seq"),
        format!("{base}:epoch"),
        format!("{base}:log"),
        format!("{base}:publishers"),
    ]
}

fn channel_of(room: &str) -> String {
    format!("roomcast:room:{{{room}}}")
}

fn room_of(channel: &str) -> Option<&str> {
    channel.strip_prefix("roomcast:room:{")?.strip_suffix('}')
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

/// One XRANGE entry: its id (`<seq>-0`) and its one field, the frame.
type StreamEntry = (String, Vec<(String, String)>);

/// A room's state in Redis as one reader at `since` needs it.
struct Snapshot {
    epoch: String,
    seq: u64,
    entries: Vec<(u64, Frame)>,
}

async fn snapshot(
    connection: &mut MultiplexedConnection,
    inner: &Inner,
    room: &str,
    since: Option<u64>,
    reader_epoch: Option<&str>,
) -> Result<Snapshot, RedisError> {
    let [seq_key, epoch_key, log_key, _] = keys(room);
    let reply: (String, u64, Vec<StreamEntry>) = redis::Script::new(SNAPSHOT_SCRIPT)
        .key(seq_key)
        .key(epoch_key)
        .key(log_key)
        .arg(inner.fresh_epoch())
        .arg(inner.room_ttl_secs)
        .arg(since.map_or(-1, |s| s as i64))
        .arg(reader_epoch.unwrap_or(""))
        .invoke_async(connection)
        .await?;
    let (epoch, seq, raw_entries) = reply;
    let mut entries = Vec::with_capacity(raw_entries.len());
    for (id, fields) in raw_entries {
        let entry_seq = id.split('-').next().and_then(|s| s.parse().ok());
        if let (Some(entry_seq), Some((_, frame))) = (entry_seq, fields.into_iter().next()) {
            entries.push((entry_seq, Frame::from(frame)));
        }
    }
    Ok(Snapshot {
        epoch,
        seq,
        entries,
    })
}

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
                    metrics::bump(&metrics.slow_reader_drops);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        metrics.messages_out.fetch_add(delivered, Ordering::Relaxed);
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
struct RoomTask {
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
    async fn run(mut self, mut queue: mpsc::Receiver<Command>, mut stopped: watch::Receiver<bool>) {
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
                metrics::bump(&self.inner.metrics.broker_reconnects);
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
        self.inner
            .metrics
            .rooms
            .store(self.rooms.len() as u64, Ordering::Relaxed);
        Ok(Membership {
            feed,
            epoch: latest.epoch,
            seq: latest.seq,
            replay,
            handle: MemberHandle::Redis(Member {
                inner,
                room: name,
                id,
            }),
        })
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
            self.inner
                .metrics
                .rooms
                .store(self.rooms.len() as u64, Ordering::Relaxed);
            unsubscribe(&mut link.sink, room)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn on_message(&mut self, link: &mut Link, message: &redis::Msg) -> Result<(), String> {
        let Some(name) = room_of(message.get_channel_name()) else {
            return Ok(());
        };
        let Some(room) = self.rooms.get(name) else {
            return Ok(());
        };
        let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else {
            return Ok(());
        };
        let mut parts = payload.splitn(3, ' ');
        let (Some(seq), Some(epoch), Some(frame)) = (parts.next(), parts.next(), parts.next())
        else {
            return Ok(());
        };
        let Ok(seq) = seq.parse::<u64>() else {
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
        self.inner
            .metrics
            .rooms
            .store(self.rooms.len() as u64, Ordering::Relaxed);
        match timeout(REDIS_TIMEOUT, link.sink.ping::<Value>()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("pub/sub ping timed out".to_string()),
        }
    }
}

/// Resolves once the broker is closing.
async fn stopping(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

enum Served {
    Stopped,
    Lost(String),
}

async fn subscribe(sink: &mut PubSubSink, room: &str) -> Result<(), RedisError> {
    match timeout(REDIS_TIMEOUT, sink.subscribe(channel_of(room))).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
    }
}

async fn unsubscribe(sink: &mut PubSubSink, room: &str) -> Result<(), RedisError> {
    match timeout(REDIS_TIMEOUT, sink.unsubscribe(channel_of(room))).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
    }
}

/// Sends publishes to Redis in queue order, holding them while Redis is away.
struct Publisher {
    inner: Arc<Inner>,
    client: Client,
    /// The SHA1 that EVALSHA names the publish script by.
    script_hash: String,
}

impl Publisher {
    async fn run(self, mut queue: mpsc::Receiver<Publish>, mut stopped: watch::Receiver<bool>) {
        let mut connection: Option<MultiplexedConnection> = None;
        let mut batch: Vec<(u64, Publish)> = Vec::with_capacity(MAX_BATCH);
        let mut counter = 0u64;
        let mut backoff = Duration::ZERO;
        loop {
            if !backoff.is_zero() {
                // After a failure. Stopping does not cut this short: what is held still
                // goes out, until the caller's drain deadline.
                tokio::select! {
                    _ = stopping(&mut stopped), if batch.is_empty() && queue.is_empty() => return,
                    _ = sleep(backoff) => {}
                }
            }
            // Connected eagerly, not at the first publish: readiness waits for this.
            let Some(live) = connection.as_mut() else {
                match connect(&self.client).await {
                    Ok(fresh) => {
                        connection = Some(fresh);
                        self.inner.set_up(&self.inner.publisher_up, true);
                    }
                    Err(_) => {
                        self.inner.set_up(&self.inner.publisher_up, false);
                        backoff = next_backoff(backoff);
                    }
                }
                continue;
            };
            if batch.is_empty() {
                let first = tokio::select! {
                    biased;
                    first = queue.recv() => first,
                    _ = stopping(&mut stopped) => {
                        // Take nothing new, but send everything already queued.
                        queue.close();
                        queue.recv().await
                    }
                };
                let Some(first) = first else { return };
                counter += 1;
                batch.push((counter, first));
                while batch.len() < MAX_BATCH {
                    let Ok(next) = queue.try_recv() else { break };
                    counter += 1;
                    batch.push((counter, next));
                }
            }
            match self.send(live, &batch).await {
                Ok(()) => {
                    batch.clear();
                    backoff = Duration::ZERO;
                    let held = (queue.max_capacity() - queue.capacity()) as u64;
                    self.inner
                        .metrics
                        .publishes_held
                        .store(held, Ordering::Relaxed);
                }
                Err(error) if error.code() == Some("NOSCRIPT") => {
                    let mut load = redis::cmd("SCRIPT");
                    load.arg("LOAD").arg(PUBLISH_SCRIPT);
                    if load.query_async::<String>(live).await.is_err() {
                        connection = None;
                        backoff = next_backoff(backoff);
                    }
                }
                Err(error) if is_rejection(&error) => {
                    // Retrying cannot help, so these publishes are reported lost.
                    log::error(
                        "redis rejected publishes",
                        json!({ "error": error.to_string(), "dropped": batch.len() }),
                    );
                    for _ in 0..batch.len() {
                        metrics::bump(&self.inner.metrics.publish_errors);
                    }
                    batch.clear();
                }
                // Gone, stalled, still loading its data, out of memory: hold and retry the same
                // batch on a fresh connection; the instance counters make the retry exactly-once.
                Err(error) => {
                    log::warn(
                        "redis publish failed, holding",
                        json!({ "error": error.to_string(), "held": batch.len() + queue.len() }),
                    );
                    connection = None;
                    self.inner.set_up(&self.inner.publisher_up, false);
                    backoff = next_backoff(backoff);
                }
            }
        }
    }

    /// One pipeline of publish scripts, in queue order.
    async fn send(
        &self,
        connection: &mut MultiplexedConnection,
        batch: &[(u64, Publish)],
    ) -> Result<(), RedisError> {
        let mut pipeline = redis::pipe();
        for (number, publish) in batch {
            let [seq_key, epoch_key, log_key, publishers_key] = keys(&publish.room);
            pipeline
                .cmd("EVALSHA")
                .arg(&self.script_hash)
                .arg(4)
                .arg(seq_key)
                .arg(epoch_key)
                .arg(log_key)
                .arg(publishers_key)
                .arg(&publish.message_json)
                .arg(self.inner.fresh_epoch())
                .arg(self.inner.history)
                .arg(self.inner.room_ttl_secs)
                .arg(channel_of(&publish.room))
                .arg(&self.inner.instance)
                .arg(*number);
        }
        pipeline
            .query_async::<Vec<Value>>(connection)
            .await
            .map(drop)
    }
}

/// Errors that retrying cannot fix: the script failed on this room's data.
fn is_rejection(error: &RedisError) -> bool {
    error.code() == Some("WRONGTYPE") || error.to_string().contains("user_script")
}
