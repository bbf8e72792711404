//! Redis full under `volatile-lru`, the policy `deploy/redis.conf` recommends: every
//! roomcast key carries a TTL, so a flood of rooms makes Redis evict the idle ones, while a
//! room that keeps chatting loses nothing and Redis stays within `maxmemory`.

use std::time::Duration;

use testkit::raw_ws::chat_text;
use testkit::redis::RedisServer;
use testkit::ws::{Ws, chat, connect, recv_json, send_chat};
use testkit::{Endpoint, Server};
use tokio::time::Instant;

use super::{attacked, figure, welcome};

const MAXMEMORY: &str = "4mb";
const MAXMEMORY_BYTES: u64 = 4 << 20;
/// `INFO` counts what Redis allocates while answering it, after it evicted for the command:
/// a reading may pass the limit by a few bytes.
const INFO_SLACK: u64 = 4096;
/// Rooms filled one after another and then left idle: twice `MAXMEMORY` in all...
const FLOOD_ROOMS: usize = 16;
const FLOOD_PER_ROOM: usize = 16;
const FLOOD_BYTES: usize = 32 * 1024;
/// ...the first ones at once, filling most of Redis (none evicted yet); then the chatting
/// room goes on alone for a while. Redis's LRU clock ticks once a second, so idle has to
/// mean idle for seconds.
const FIRST_ROOMS: usize = 3;
const QUIET: Duration = Duration::from_millis(2500);
/// Between the later rooms' messages: a room takes about half a second, so the rooms Redis
/// evicts from have been idle for seconds, longer than the chatting room ever is.
const PAUSE: Duration = Duration::from_millis(30);

/// Publishes one flood message and reads the flooder's frames up to its own copy; whether
/// it was refused, and how many reset notices came first.
async fn flood_once(flooder: &mut Ws, body: &str) -> (bool, u64) {
    send_chat(flooder, body).await;
    let mut resets = 0;
    loop {
        let frame = recv_json(flooder).await;
        match frame["type"].as_str() {
            None => return (false, resets),
            Some("error") => return (true, resets),
            Some("reset") => resets += 1,
            Some(_) => panic!("the flooder got {frame}"),
        }
    }
}

/// One chat message through the lively room: the sender's and the reader's next frames
/// must both be it, with the next seq.
async fn chat_once(sender: &mut Ws, reader: &mut Ws, seq: &mut u64) {
    *seq += 1;
    let message = format!("lively {seq}");
    send_chat(sender, &message).await;
    for ws in [sender, reader] {
        let frame = recv_json(ws).await;
        assert!(frame.get("type").is_none(), "the chatting room got {frame}");
        assert_eq!(chat(&frame), (message.clone(), *seq));
    }
}

/// Every key under `pattern`, with its TTL in seconds (-1: none).
fn ttls(redis: &RedisServer, pattern: &str) -> Vec<(String, i64)> {
    let keys = redis.command(&["KEYS", pattern]).expect("KEYS");
    keys.into_iter()
        .map(|key| {
            let ttl = redis.command(&["TTL", &key]).expect("TTL");
            let ttl = ttl[0].trim_start_matches(':').parse().expect("a number");
            (key, ttl)
        })
        .collect()
}

fn used_memory(redis: &RedisServer) -> u64 {
    redis
        .info_number("memory", "used_memory")
        .expect("used_memory")
}

#[tokio::test]
async fn a_full_redis_with_volatile_lru_evicts_idle_rooms_and_loses_nothing_live() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start_with(&[
        "--appendonly",
        "no",
        "--maxmemory",
        MAXMEMORY,
        "--maxmemory-policy",
        "volatile-lru",
    ]);
    let url = redis.url();
    let server: Server = attacked(&[("ROOMCAST_REDIS_URL", &url)]);
    server.wait_metric("roomcast_ready", 1).await;
    let lively = server.ws_url("/ws/chat/lively/");
    let mut sender = connect(&lively, true).await;
    let mut reader = connect(&lively, true).await;
    welcome(&mut sender).await;
    welcome(&mut reader).await;

    let text = chat_text(FLOOD_BYTES);
    let body = &text[r#"{"message":""#.len()..text.len() - 2];
    let (mut seq, mut refused, mut resets, mut peak) = (0, 0, 0, 0);
    for room in 0..FLOOD_ROOMS {
        let url = server.ws_url(&format!("/ws/chat/idle-{room}/"));
        let mut flooder = connect(&url, true).await;
        welcome(&mut flooder).await;
        for _ in 0..FLOOD_PER_ROOM {
            let (was_refused, reset_notices) = flood_once(&mut flooder, body).await;
            refused += u64::from(was_refused);
            resets += reset_notices;
            chat_once(&mut sender, &mut reader, &mut seq).await;
            if room >= FIRST_ROOMS {
                tokio::time::sleep(PAUSE).await;
            }
        }
        // The room goes idle: its member leaves.
        drop(flooder);
        peak = peak.max(used_memory(&redis));
        if room + 1 == FIRST_ROOMS {
            let quiet_since = Instant::now();
            while quiet_since.elapsed() < QUIET {
                chat_once(&mut sender, &mut reader, &mut seq).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    let evicted = redis.info_number("stats", "evicted_keys").unwrap_or(0);
    let idle_logs = ttls(&redis, "roomcast:room:{idle-*}:log").len();
    figure(
        "redis volatile-lru",
        &format!(
            "{FLOOD_ROOMS} rooms x {FLOOD_PER_ROOM} x {FLOOD_BYTES} B into {MAXMEMORY}: \
             {evicted} keys evicted, {idle_logs} idle rooms keep a history, used_memory at \
             most {peak} B, {seq} chat messages all delivered, {refused} flood publishes \
             refused, {resets} reset notices to flooders"
        ),
    );
    assert!(
        evicted > 0,
        "nothing was evicted: the flood never filled Redis"
    );
    assert!(
        idle_logs < FLOOD_ROOMS,
        "every idle room kept its history: {idle_logs}"
    );
    assert!(
        peak <= MAXMEMORY_BYTES + INFO_SLACK,
        "used_memory {peak} B, over maxmemory {MAXMEMORY_BYTES} B"
    );
    let untimed: Vec<(String, i64)> = ttls(&redis, "roomcast:*")
        .into_iter()
        .filter(|(_, ttl)| *ttl < 0)
        .collect();
    assert!(
        untimed.is_empty(),
        "keys volatile-lru cannot evict: {untimed:?}"
    );
    assert_eq!(
        refused, 0,
        "Redis refused flood publishes instead of evicting"
    );
    assert_eq!(server.metric("roomcast_publish_failures_total").await, 0);
    // The chatting room carries on, its keys all there.
    chat_once(&mut sender, &mut reader, &mut seq).await;
    let lively_keys = ttls(&redis, "roomcast:room:{lively}:*");
    assert!(lively_keys.len() >= 4, "{lively_keys:?}");
}
