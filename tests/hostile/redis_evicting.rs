//! Redis full under `volatile-lru`, the policy `deploy/redis.conf` recommends: every
//! roomcast key carries a TTL, so a flood of rooms makes Redis evict the idle ones, while a
//! room that keeps chatting loses nothing and Redis stays within `maxmemory`.

use std::time::Duration;

use testkit::Endpoint;
use testkit::raw_ws::chat_text;
use testkit::redis::RedisServer;
use testkit::ws::{Ws, chat, connect, recv_unless_presence, send_chat};

use super::{REDIS_MAXMEMORY, REDIS_MAXMEMORY_BYTES, attacked_on, figure, small_redis, welcome};

/// `INFO` counts what Redis allocates while answering it, after it evicted for the command:
/// a reading may pass the limit by a few bytes.
const INFO_SLACK: u64 = 4096;
/// Rooms filled one after another and then left idle, half again `REDIS_MAXMEMORY` in all,
/// at a pace: Redis's LRU clock ticks once a second, so idle has to mean idle for seconds.
/// About nine rooms fit, so a room has been idle for three seconds or more when Redis
/// evicts it, while the chatting room is never idle for one.
const FLOOD_ROOMS: usize = 20;
const FLOOD_PER_ROOM: usize = 8;
const FLOOD_BYTES: usize = 32 * 1024;
const PAUSE: Duration = Duration::from_millis(40);

/// Publishes one flood message and reads the flooder's frames up to its own copy; whether
/// it was refused, and how many reset notices came first.
async fn flood_once(flooder: &mut Ws, body: &str) -> (bool, u64) {
    send_chat(flooder, body).await;
    let mut resets = 0;
    loop {
        let frame = recv_unless_presence(flooder).await;
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
        let frame = recv_unless_presence(ws).await;
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
    let Some(redis) = small_redis("volatile-lru") else {
        return;
    };
    let server = attacked_on(&redis, &[]).await;
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
            tokio::time::sleep(PAUSE).await;
        }
        // The room goes idle: its member leaves.
        drop(flooder);
        peak = peak.max(used_memory(&redis));
    }

    let evicted = redis.info_number("stats", "evicted_keys").unwrap_or(0);
    let idle_logs = ttls(&redis, "roomcast:room:{idle-*}:log").len();
    figure(
        "redis volatile-lru",
        &format!(
            "{FLOOD_ROOMS} rooms x {FLOOD_PER_ROOM} x {FLOOD_BYTES} B into {REDIS_MAXMEMORY}: \
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
        peak <= REDIS_MAXMEMORY_BYTES + INFO_SLACK,
        "used_memory {peak} B, over maxmemory {REDIS_MAXMEMORY_BYTES} B"
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
