//! The load of one run: connect every member, split them among reader tasks, publish at the
//! rate for the time, wait for the deliveries to drain, and measure CPU over that window.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{self, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

use testkit::bench::{client_config, wait_for_websockets};
use testkit::cpu::{CpuWindow, Whose};
use testkit::ws::{TunedWs as Ws, connect_tuned};

use crate::args::Plan;

/// The signing secret of `--auth` runs.
pub const SECRET: &str = "a-benchmark-secret-of-at-least-32-bytes";

/// Member `m`'s token: a user id and a name, as a backend would issue, valid for an hour.
fn token(m: usize) -> String {
    let claims = serde_json::json!({
        "sub": format!("user-{m}"),
        "name": format!("Member {m}"),
        "aud": "roomcast",
        "exp": roomcast::auth::now_secs() + 3600,
    });
    roomcast::auth::jwt::sign(&claims, SECRET.as_bytes())
}
use crate::receive::read;
use crate::run::Outcome;

/// Where one member connects, and whether it publishes.
struct Member {
    room: usize,
    instance: usize,
    publisher: bool,
}

/// Runs the load against the servers at `addrs` (whose `pids` are measured); `tag` makes
/// this run's room names its own.
pub async fn drive(
    plan: &Plan,
    rate: f64,
    addrs: &[SocketAddr],
    pids: &[u32],
    tag: &str,
) -> Result<Outcome, String> {
    let epoch = Instant::now();
    let members: Vec<Member> = (0..plan.members())
        .map(|m| {
            let (room, index) = (m / plan.subs, m % plan.subs);
            Member {
                room,
                instance: (room + index) % addrs.len(),
                publisher: index < plan.pubs,
            }
        })
        .collect();

    let connecting = Instant::now();
    let attempts = stream::iter(members.iter().enumerate().map(|(m, member)| {
        let addr = addrs[member.instance];
        let path = format!("/ws/chat/{tag}-{}/", member.room);
        let bearer = plan.auth.then(|| format!("Bearer {}", token(m)));
        async move {
            let headers: Vec<(&str, &str)> = bearer
                .as_deref()
                .map(|bearer| ("Authorization", bearer))
                .into_iter()
                .collect();
            (
                m,
                connect_tuned(addr, &path, client_config(), &headers).await,
            )
        }
    }))
    .buffer_unordered(64)
    .collect::<Vec<_>>()
    .await;
    let mut sockets: Vec<Option<Ws>> = (0..members.len()).map(|_| None).collect();
    for (m, result) in attempts {
        sockets[m] = Some(result.map_err(|error| format!("member {m}: {error}"))?);
    }
    wait_for_websockets(addrs, members.len() as u64).await?;
    let connect_secs = connecting.elapsed().as_secs_f64();

    let mut readers: Vec<Vec<(usize, usize, SplitStream<Ws>)>> =
        (0..plan.tasks).map(|_| Vec::new()).collect();
    let mut publishers = Vec::new();
    let mut quiet_sinks = Vec::new();
    for (m, socket) in sockets.into_iter().enumerate() {
        let (sink, stream) = socket.expect("every member connected").split();
        readers[m % plan.tasks].push((m, members[m].room, stream));
        if members[m].publisher {
            publishers.push(Publisher {
                room: members[m].room,
                member: m,
                sink,
                n: 0,
                alive: true,
                dirty: false,
            });
        } else {
            quiet_sinks.push(sink);
        }
    }
    // Interleave rooms, so consecutive messages go to different rooms.
    publishers.sort_by_key(|p| (p.member % plan.subs, p.room));

    let delivered = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    // No room can see more seqs than the run publishes in all; a larger one is not ours.
    let max_seq = (rate * plan.secs).round() as u64 + 1;
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|conns| {
            let delivered = Arc::clone(&delivered);
            tokio::spawn(read(conns, epoch, max_seq, delivered, stopped.clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The servers, then this generator.
    let whose: Vec<Whose> = pids
        .iter()
        .map(|&pid| Whose::Pid(pid))
        .chain([Whose::Me])
        .collect();
    let window = CpuWindow::start(&whose);
    let publish_start = epoch.elapsed().as_nanos() as u64;
    let published = publish(publishers, rate, plan.secs, epoch, plan.rooms).await;
    let expected: u64 = published.sent_per_room.iter().sum::<u64>() * plan.subs as u64;

    // Drain: until everything arrived, the deadline passed, or nothing arrived for 1 s.
    let drain_start = Instant::now();
    let (mut last_count, mut last_change) = (delivered.load(Ordering::Relaxed), Instant::now());
    while drain_start.elapsed() < plan.drain {
        let now = delivered.load(Ordering::Relaxed);
        if now >= expected {
            break;
        }
        if now != last_count {
            (last_count, last_change) = (now, Instant::now());
        } else if last_change.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cpu = window.finish();
    let (server_cpu, generator_cpu) = match cpu.processes.split_last() {
        Some((generator, servers)) => (servers.iter().sum(), *generator),
        None => (0.0, 0.0),
    };
    let (irq_cpu, machine_cpu) = (cpu.irq, cpu.machine);
    let other_cpu = (machine_cpu - server_cpu - generator_cpu - irq_cpu).max(0.0);
    let _ = stop.send(true);

    let mut outcome = Outcome {
        rate,
        sent: published.sent_per_room.iter().sum(),
        publish_secs: published.secs,
        publish_errors: published.errors,
        expected,
        server_cpu,
        generator_cpu,
        irq_cpu,
        machine_cpu,
        other_cpu,
        connect_secs,
        ..Outcome::default()
    };
    let mut last_ns = publish_start;
    for task in tasks {
        let read = task.await.map_err(|e| format!("reader task failed: {e}"))?;
        outcome.latency_us.merge(&read.latency_us);
        outcome.malformed += read.malformed;
        last_ns = last_ns.max(read.last_ns);
        for state in read.members {
            let want = published.sent_per_room[state.room];
            let got = state.unique_up_to(want);
            outcome.delivered += got;
            outcome.lost += want - got;
            outcome.unexpected += state.unique - got;
            outcome.duplicated += state.duplicated;
            outcome.reordered += state.reordered;
            if let Some(end) = state.end {
                *outcome.ended.entry(end).or_default() += 1;
            }
        }
    }
    outcome.window_secs = (last_ns - publish_start) as f64 / 1e9;
    drop(published.publishers);
    drop(quiet_sinks);
    Ok(outcome)
}

// ------------------------------------------------------------------ publishing

pub struct Publisher {
    room: usize,
    member: usize,
    sink: SplitSink<Ws, Message>,
    n: u64,
    alive: bool,
    /// Written to since the last flush.
    dirty: bool,
}

struct Published {
    sent_per_room: Vec<u64>,
    errors: u64,
    secs: f64,
    /// Kept open until the run is counted.
    publishers: Vec<Publisher>,
}

/// Sends `rate × secs` messages round-robin over the publishers: every 1 ms tick sends what
/// is due by then, then flushes each socket written to once.
async fn publish(
    mut publishers: Vec<Publisher>,
    rate: f64,
    secs: f64,
    epoch: Instant,
    rooms: usize,
) -> Published {
    let total = (rate * secs).round() as u64;
    let count = publishers.len() as u64;
    let mut sent_per_room = vec![0u64; rooms];
    let mut errors = 0;
    let mut dirty: Vec<usize> = Vec::new();
    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut k = 0u64;
    while k < total {
        ticker.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(total);
        while k < due {
            let index = (k % count) as usize;
            k += 1;
            let publisher = &mut publishers[index];
            if !publisher.alive {
                continue;
            }
            publisher.n += 1;
            let text = format!(
                "{{\"message\":\"{}:{}:{}\"}}",
                epoch.elapsed().as_nanos(),
                publisher.member,
                publisher.n
            );
            match publisher.sink.feed(Message::text(text)).await {
                Ok(()) => {
                    sent_per_room[publisher.room] += 1;
                    if !publisher.dirty {
                        publisher.dirty = true;
                        dirty.push(index);
                    }
                }
                Err(_) => {
                    publisher.alive = false;
                    errors += 1;
                }
            }
        }
        for index in dirty.drain(..) {
            let publisher = &mut publishers[index];
            publisher.dirty = false;
            if publisher.sink.flush().await.is_err() {
                publisher.alive = false;
                errors += 1;
            }
        }
    }
    Published {
        sent_per_room,
        errors,
        secs: start.elapsed().as_secs_f64(),
        publishers,
    }
}
