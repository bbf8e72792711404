//! The chat load: two members per room, one on each instance, the one on instance `room % 2`
//! publishing; publishing at a fixed total rate, and counting what every member receives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{self, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

use testkit::bench::{client_config, wait_for_websockets};
use testkit::ws::{TunedWs as Ws, connect_tuned};

/// Members per room: one on each of the two instances.
pub const MEMBERS_PER_ROOM: usize = 2;

pub struct Load {
    /// One per room, in room order.
    publishers: Vec<Publisher>,
    /// The other member of each room: it only reads, but its socket stays open.
    quiet_sinks: Vec<SplitSink<Ws, Message>>,
    /// Chat frames each member received; member `m` is in room `m / 2`, on instance `m % 2`.
    received: Arc<Vec<AtomicU64>>,
    /// Members whose connection ended.
    ended: Arc<AtomicU64>,
    /// Messages sent to each room so far, over every phase.
    sent_per_room: Vec<u64>,
    readers: Vec<JoinHandle<()>>,
    epoch: Instant,
}

struct Publisher {
    sink: SplitSink<Ws, Message>,
    alive: bool,
    /// Written to since the last flush.
    dirty: bool,
}

/// One phase of publishing.
pub struct Published {
    pub per_room: Vec<u64>,
    pub secs: f64,
    pub errors: u64,
}

impl Load {
    /// Connects every member of `rooms` (instance 0 at `addrs[0]`, instance 1 at `addrs[1]`)
    /// and waits until the instances count them all.
    pub async fn connect(addrs: &[SocketAddr], rooms: &[String]) -> Result<Load, String> {
        let members = rooms.len() * MEMBERS_PER_ROOM;
        let attempts = stream::iter((0..members).map(|m| {
            let addr = addrs[m % MEMBERS_PER_ROOM];
            let path = format!("/ws/chat/{}/", rooms[m / MEMBERS_PER_ROOM]);
            async move { (m, connect_tuned(addr, &path, client_config(), &[]).await) }
        }))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
        let mut sockets: Vec<Option<Ws>> = (0..members).map(|_| None).collect();
        for (m, result) in attempts {
            sockets[m] = Some(result.map_err(|error| format!("member {m}: {error}"))?);
        }
        wait_for_websockets(addrs, members as u64).await?;

        let received: Arc<Vec<AtomicU64>> = Arc::new((0..members).map(|_| 0.into()).collect());
        let ended = Arc::new(AtomicU64::new(0));
        let mut load = Load {
            publishers: Vec::new(),
            quiet_sinks: Vec::new(),
            received: Arc::clone(&received),
            ended: Arc::clone(&ended),
            sent_per_room: vec![0; rooms.len()],
            readers: Vec::new(),
            epoch: Instant::now(),
        };
        for (m, socket) in sockets.into_iter().enumerate() {
            let (sink, stream) = socket.expect("every member connected").split();
            let room = m / MEMBERS_PER_ROOM;
            if m % MEMBERS_PER_ROOM == room % MEMBERS_PER_ROOM {
                load.publishers.push(Publisher {
                    sink,
                    alive: true,
                    dirty: false,
                });
            } else {
                load.quiet_sinks.push(sink);
            }
            let (received, ended) = (Arc::clone(&received), Arc::clone(&ended));
            load.readers
                .push(tokio::spawn(count(stream, m, received, ended)));
        }
        Ok(load)
    }

    /// Sends `rate × secs` messages round-robin over the rooms: every 1 ms tick sends what is
    /// due by then, then flushes each socket written to once.
    pub async fn publish(&mut self, rate: f64, secs: f64) -> Published {
        let total = (rate * secs).round() as u64;
        let rooms = self.publishers.len();
        let mut published = Published {
            per_room: vec![0; rooms],
            secs: 0.0,
            errors: 0,
        };
        let mut dirty: Vec<usize> = Vec::new();
        let start = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut k = 0u64;
        while k < total {
            ticker.tick().await;
            let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(total);
            while k < due {
                let room = (k % rooms as u64) as usize;
                k += 1;
                let publisher = &mut self.publishers[room];
                if !publisher.alive {
                    continue;
                }
                // As the fan-out bench writes them: `<ns since start>:<room>:<n>`.
                let text = format!(
                    "{{\"message\":\"{}:{room}:{}\"}}",
                    self.epoch.elapsed().as_nanos(),
                    self.sent_per_room[room] + 1
                );
                match publisher.sink.feed(Message::text(text)).await {
                    Ok(()) => {
                        self.sent_per_room[room] += 1;
                        published.per_room[room] += 1;
                        if !publisher.dirty {
                            publisher.dirty = true;
                            dirty.push(room);
                        }
                    }
                    Err(_) => {
                        publisher.alive = false;
                        published.errors += 1;
                    }
                }
            }
            for room in dirty.drain(..) {
                let publisher = &mut self.publishers[room];
                publisher.dirty = false;
                if publisher.sink.flush().await.is_err() {
                    publisher.alive = false;
                    published.errors += 1;
                }
            }
        }
        published.secs = start.elapsed().as_secs_f64();
        published
    }

    /// Waits until every member received every message sent to its room so far; gives up
    /// after `limit`, or once nothing arrived for 1 s. True when it all arrived.
    pub async fn drain(&self, limit: Duration) -> bool {
        let started = Instant::now();
        let (mut last, mut last_change) = (self.total_received(), Instant::now());
        loop {
            if self.missing() == 0 {
                return true;
            }
            let now = self.total_received();
            if now != last {
                (last, last_change) = (now, Instant::now());
            }
            if started.elapsed() > limit || last_change.elapsed() > Duration::from_secs(1) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Chat frames received by each member so far.
    pub fn received(&self) -> Vec<u64> {
        self.received
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect()
    }

    fn total_received(&self) -> u64 {
        self.received().iter().sum()
    }

    /// (members' messages not received, members' messages received beyond what was sent).
    pub fn missing_and_extra(&self) -> (u64, u64) {
        let received = self.received();
        received
            .iter()
            .enumerate()
            .fold((0, 0), |(missing, extra), (m, &got)| {
                let sent = self.sent_per_room[m / MEMBERS_PER_ROOM];
                (
                    missing + sent.saturating_sub(got),
                    extra + got.saturating_sub(sent),
                )
            })
    }

    fn missing(&self) -> u64 {
        self.missing_and_extra().0
    }

    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

/// One member's reader: counts chat frames until its connection ends.
async fn count(
    mut stream: SplitStream<Ws>,
    member: usize,
    received: Arc<Vec<AtomicU64>>,
    ended: Arc<AtomicU64>,
) {
    while let Some(item) = stream.next().await {
        match item {
            Ok(Message::Text(text)) if text.as_str().starts_with("{\"message\":") => {
                received[member].fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    ended.fetch_add(1, Ordering::Relaxed);
}
