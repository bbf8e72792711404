//! Logs stay bounded under abuse: while Redis refuses every write (`maxmemory 1`, no
//! eviction) under a steady load of publishes, the server writes a handful of lines about it,
//! none over 1 KiB, and says once, with a count, when Redis accepts publishes again.
//!
//! Needs `redis-server`; without it the test is skipped, or fails when `CI` is set.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use testkit::redis::RedisServer;
use testkit::ws::{Ws, connect, recv_json};
use testkit::{Endpoint, Roomcast, WAIT, wait};
use tokio_tungstenite::tungstenite::Message;

use super::shared_machine;

const PUBLISHERS: usize = 4;
/// Longer than the publisher retries a refused publish (2 s), so some are given up.
const REFUSING_FOR: Duration = Duration::from_millis(3500);
const MAX_LINE: usize = 1024;

/// Sends `message` and reads until its chat frame or an error frame comes back.
async fn publish(ws: &mut Ws, message: &str) -> Value {
    let frame = serde_json::json!({ "message": message }).to_string();
    ws.send(Message::text(frame)).await.unwrap();
    loop {
        let frame = recv_json(ws).await;
        if frame["message"] == message || frame["type"] == "error" {
            return frame;
        }
    }
}

#[tokio::test]
async fn redis_refusing_writes_under_load_logs_a_handful_of_short_lines() {
    let _machine = shared_machine().await;
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let server = Roomcast::debug()
        .env("ROOMCAST_REDIS_URL", &redis.url())
        .env("ROOMCAST_RATE", "1000")
        .env("ROOMCAST_BURST", "1000")
        .start();
    server.wait_metric("roomcast_ready", 1).await;
    let url = server.ws_url("/ws/chat/oom/");
    let mut publishers = Vec::new();
    for _ in 0..PUBLISHERS {
        let mut ws = connect(&url, true).await;
        assert_eq!(recv_json(&mut ws).await["type"], "welcome");
        publishers.push(ws);
    }
    let before = publish(&mut publishers[0], "before").await;
    assert_eq!(before["message"], "before", "{before}");
    let lines_before = server.logs().len();

    for args in [
        ["CONFIG", "SET", "maxmemory-policy", "noeviction"],
        ["CONFIG", "SET", "maxmemory", "1"],
    ] {
        assert_eq!(
            redis.command(&args),
            Some(vec!["+OK".to_string()]),
            "{args:?}"
        );
    }
    // Every publisher keeps sending, 50 a second each, without waiting for answers.
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < REFUSING_FOR {
        for ws in publishers.iter_mut() {
            let frame = serde_json::json!({ "message": format!("refused {sent}") });
            ws.send(Message::text(frame.to_string())).await.unwrap();
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let errors = server.metric("roomcast_publish_failures_total").await;
    assert!(
        errors > 0,
        "no publish was given up while Redis refused writes"
    );
    assert_eq!(
        redis.command(&["CONFIG", "SET", "maxmemory", "0"]),
        Some(vec!["+OK".to_string()])
    );

    // Drain what the refusals sent back, then publish until one goes through again.
    for ws in publishers.iter_mut() {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), ws.next()).await {}
    }
    wait::until("a publish to go through again", WAIT, async || {
        let frame = publish(&mut publishers[1], "after").await;
        if frame["message"] == "after" {
            Ok(())
        } else {
            Err(frame.to_string())
        }
    })
    .await;
    let recovered = wait::until("the accepts-again line", WAIT, async || {
        server
            .logs()
            .into_iter()
            .find(|line| line.contains("redis accepts publishes again"))
            .ok_or_else(|| "not yet".to_string())
    })
    .await;

    let logs = server.logs();
    let during = &logs[lines_before..];
    eprintln!(
        "{sent} publishes while Redis refused writes; {errors} given up; log lines meanwhile:\n{}",
        during.join("\n")
    );
    for line in &logs {
        assert!(
            line.len() <= MAX_LINE,
            "a line of {} bytes: {line}",
            line.len()
        );
        serde_json::from_str::<Value>(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
    }
    let about_redis = during
        .iter()
        .filter(|line| {
            let lower = line.to_ascii_lowercase();
            lower.contains("redis") || lower.contains("oom") || lower.contains("publish")
        })
        .count();
    assert!(
        (2..=4).contains(&about_redis),
        "{about_redis} lines about the refusals: {during:#?}"
    );
    let recovered: Value = serde_json::from_str(&recovered).unwrap();
    let refusals = recovered["refusals"].as_u64().unwrap_or(0);
    assert!(refusals > 0, "{recovered}");
}
