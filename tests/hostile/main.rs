//! Hostile clients I: memory stays bounded and stuck peers are cut. Every test attacks the
//! real binary over loopback the way a hostile or broken client would, then asserts the
//! bound: history under its budget ([`history`]), Redis full with and without eviction
//! ([`redis_full`], [`redis_evicting`]), a reader that stops reading chat, a replay, echoes
//! or error frames ([`stuck_reader`]), replays that are never read ([`replay`]), half-sent
//! messages and silent peers ([`peer_clock`]), unread pipelined responses ([`pipelined`]),
//! the open-file limit ([`nofile`]), large messages in flight ([`inbound`]) and what one
//! connection costs at worst ([`per_connection`]).
//!
//! RSS is always read from a server process of the test's own, as growth over a baseline.
//! Figures go to stderr: `cargo test --test hostile -- --nocapture`.

mod history;
mod inbound;
mod nofile;
mod peer_clock;
mod per_connection;
mod pipelined;
mod redis_evicting;
mod redis_full;
mod replay;
mod stuck_reader;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use testkit::bench::LOAD_GENERATOR_LIMITS;
use testkit::redis::RedisServer;
use testkit::ws::{Ws, recv_json};
use testkit::{Endpoint, Roomcast, Server, http};
use tokio::task::JoinHandle;

/// A roomcast process attacked from one address: the attacks flood on purpose, so the
/// per-connection publish rate and the per-address caps are lifted (they are not what these
/// tests are about); `env` comes on top.
fn attacked(env: &[(&str, &str)]) -> Server {
    Roomcast::debug()
        .envs(LOAD_GENERATOR_LIMITS)
        .envs(env)
        .start()
}

/// A short clock, so the timing tests take seconds: ping after 1 s of quiet, and cut a
/// silent peer, a stalled write or an unfinished message after 3 s.
const SHORT_CLOCK: &[(&str, &str)] = &[
    ("ROOMCAST_HEARTBEAT_MS", "1000"),
    ("ROOMCAST_PEER_TIMEOUT_MS", "3000"),
];
const PEER_TIMEOUT: Duration = Duration::from_secs(3);
/// How late past its deadline a cut may come.
const LATE: Duration = Duration::from_secs(1);

/// A long clock, for tests that measure while nobody may be cut for time.
const LONG_CLOCK: &[(&str, &str)] = &[
    ("ROOMCAST_HEARTBEAT_MS", "30000"),
    ("ROOMCAST_PEER_TIMEOUT_MS", "60000"),
];

/// What the Redis-full tests give Redis: a small fraction of what the rooms would take.
const REDIS_MAXMEMORY: &str = "4mb";
const REDIS_MAXMEMORY_BYTES: u64 = 4 << 20;

/// A redis-server holding at most [`REDIS_MAXMEMORY`], freeing it by `policy`; without the
/// append-only file, which would only slow the flood down. `None` where there is no
/// redis-server (skipped, or failed in CI).
fn small_redis(policy: &str) -> Option<RedisServer> {
    if !RedisServer::available() {
        return None;
    }
    Some(RedisServer::start_with(&[
        "--appendonly",
        "no",
        "--maxmemory",
        REDIS_MAXMEMORY,
        "--maxmemory-policy",
        policy,
    ]))
}

/// [`attacked`], with rooms in `redis`, once it is ready.
async fn attacked_on(redis: &RedisServer, env: &[(&str, &str)]) -> Server {
    let url = redis.url();
    let mut env = env.to_vec();
    env.push(("ROOMCAST_REDIS_URL", &url));
    let server = attacked(&env);
    server.wait_metric("roomcast_ready", 1).await;
    server
}

/// Prints one measured figure where `--nocapture` shows it.
fn figure(test: &str, text: &str) {
    eprintln!("hostile figure: {test}: {text}");
}

/// The welcome frame an extended client gets first.
async fn welcome(ws: &mut Ws) -> Value {
    let frame = recv_json(ws).await;
    assert_eq!(frame["type"], "welcome", "{frame}");
    frame
}

/// `/readyz` polled every 50 ms on a task of its own, for tests that say it stays 200.
struct ReadinessWatch {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<u16>>,
}

impl ReadinessWatch {
    fn start(addr: SocketAddr) -> ReadinessWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let status = http::try_get(addr, "/readyz").await.map_or(0, |r| r.status);
                statuses.push(status);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            statuses
        });
        ReadinessWatch { stop, task }
    }

    /// Every status seen (0: no answer), in order.
    async fn stop(self) -> Vec<u16> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the readiness watch")
    }
}
