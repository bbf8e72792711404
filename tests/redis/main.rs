//! The Redis broker: several roomcast servers on one real redis-server. They run in this
//! process, each with its own runtime and broker, except where a test reads the log.
//!
//! Needs `redis-server` (`apt-get install -y redis-server`); without it the tests are
//! skipped, or fail when `CI` is set.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use testkit::redis::RedisServer;
use testkit::ws::{
    Ws, chat, connect, expect_close, next_message, recv_json, recv_unless_presence, send_chat,
};
use testkit::{Endpoint, InProcess, Server, WAIT, http, wait};
use tokio_tungstenite::tungstenite::Message;

mod frames;

/// For tests that publish as fast as they can, far above the default publish rate.
const FLOOD: &[(&str, &str)] = &[("ROOMCAST_RATE", "100000"), ("ROOMCAST_BURST", "100000")];

/// A server on `redis`, once it is ready.
async fn instance(redis: &RedisServer, extra: &[(&str, &str)]) -> InProcess {
    let url = redis.url();
    let mut env = vec![("ROOMCAST_REDIS_URL", url.as_str())];
    env.extend_from_slice(extra);
    let server = InProcess::start(&env);
    server.wait_metric("roomcast_ready", 1).await;
    server
}

async fn welcome(ws: &mut Ws) -> Value {
    let frame = recv_json(ws).await;
    assert_eq!(frame["type"], "welcome", "{frame}");
    frame
}

/// Members come and go in these rooms; the tests are about their messages.
fn is_presence(frame: &Value) -> bool {
    matches!(frame["type"].as_str(), Some("join" | "leave" | "members"))
}

/// Polls until `check` holds, failing after `WAIT`.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    wait::until(what, WAIT, async || {
        if check() {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await
}

#[tokio::test]
async fn messages_cross_instances_with_one_seq() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis, FLOOD).await, instance(&redis, FLOOD).await);
    let mut on_a = connect(&a.ws_url("/ws/chat/shared/"), false).await;
    let mut on_b = connect(&b.ws_url("/ws/chat/shared/"), false).await;
    a.wait_metric("roomcast_rooms", 1).await;
    b.wait_metric("roomcast_rooms", 1).await;

    send_chat(&mut on_a, "from a").await;
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(chat(&recv_json(ws).await), ("from a".to_string(), 1));
    }
    send_chat(&mut on_b, "from b").await;
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(chat(&recv_json(ws).await), ("from b".to_string(), 2));
    }
}

#[tokio::test]
async fn publishers_on_every_instance_share_one_total_order() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let instances = [
        instance(&redis, FLOOD).await,
        instance(&redis, FLOOD).await,
        instance(&redis, FLOOD).await,
    ];
    let mut clients = Vec::new();
    for server in &instances {
        for _ in 0..2 {
            clients.push(connect(&server.ws_url("/ws/chat/order/"), false).await);
        }
    }
    for server in &instances {
        server.wait_metric("roomcast_websockets_open", 2).await;
    }
    const EACH: usize = 30;
    let publishing = clients
        .iter_mut()
        .enumerate()
        .map(|(index, ws)| async move {
            for n in 0..EACH {
                send_chat(ws, &format!("{index}:{n}")).await;
            }
        });
    futures_util::future::join_all(publishing).await;

    let total = (EACH * 6) as u64;
    let mut orders = Vec::new();
    for ws in clients.iter_mut() {
        let mut order = Vec::new();
        for seq in 1..=total {
            let (message, got) = chat(&recv_json(ws).await);
            assert_eq!(got, seq);
            order.push(message);
        }
        orders.push(order);
    }
    assert!(
        orders.windows(2).all(|pair| pair[0] == pair[1]),
        "instances disagree on the order"
    );
    for index in 0..6 {
        let own: Vec<_> = orders[0]
            .iter()
            .filter(|m| m.starts_with(&format!("{index}:")))
            .cloned()
            .collect();
        assert_eq!(
            own,
            (0..EACH)
                .map(|n| format!("{index}:{n}"))
                .collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn resume_on_another_instance_replays_from_the_shared_history() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis, FLOOD).await, instance(&redis, FLOOD).await);
    let mut writer = connect(&a.ws_url("/ws/chat/history/"), true).await;
    let epoch = welcome(&mut writer).await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    for n in 1..=5 {
        send_chat(&mut writer, &format!("n{n}")).await;
        assert_eq!(chat(&recv_json(&mut writer).await).1, n);
    }
    let mut reader = connect(
        &b.ws_url(&format!("/ws/chat/history/?since=2&epoch={epoch}")),
        true,
    )
    .await;
    let hello = welcome(&mut reader).await;
    assert_eq!(
        (hello["epoch"].as_str(), hello["seq"].as_u64()),
        (Some(epoch.as_str()), Some(5))
    );
    for n in 3..=5 {
        assert_eq!(chat(&recv_json(&mut reader).await), (format!("n{n}"), n));
    }
    send_chat(&mut writer, "n6").await;
    assert_eq!(chat(&recv_json(&mut reader).await), ("n6".to_string(), 6));
}

#[tokio::test]
async fn a_flushed_redis_starts_a_new_epoch_and_clients_are_told() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let server = instance(&redis, &[]).await;
    let url = server.ws_url("/ws/chat/flushed/");
    let mut member = connect(&url, true).await;
    let old_epoch = welcome(&mut member).await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    for n in 1..=3 {
        send_chat(&mut member, &format!("old{n}")).await;
        recv_json(&mut member).await;
    }
    redis.command(&["FLUSHALL"]).unwrap();
    send_chat(&mut member, "new1").await;
    let reset = recv_json(&mut member).await;
    assert_eq!(
        (reset["type"].as_str(), reset["reason"].as_str()),
        (Some("reset"), Some("epoch"))
    );
    assert_ne!(reset["epoch"], old_epoch.as_str());
    assert_eq!(chat(&recv_json(&mut member).await), ("new1".to_string(), 1));

    let mut late = connect(
        &server.ws_url(&format!("/ws/chat/flushed/?since=3&epoch={old_epoch}")),
        true,
    )
    .await;
    welcome(&mut late).await;
    assert_eq!(recv_json(&mut late).await["reason"], "epoch");
    assert_eq!(chat(&recv_json(&mut late).await), ("new1".to_string(), 1));
}

#[tokio::test]
async fn rooms_are_unsubscribed_when_their_last_member_leaves_and_keys_expire() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let server = instance(&redis, &[("ROOMCAST_ROOM_TTL_SECS", "1")]).await;
    let mut ws = connect(&server.ws_url("/ws/chat/brief/"), false).await;
    let channels = || redis.command(&["PUBSUB", "CHANNELS"]).unwrap_or_default();
    eventually("the room's channel", || {
        channels().iter().any(|c| c.contains("brief"))
    })
    .await;
    send_chat(&mut ws, "hello").await;
    recv_json(&mut ws).await;
    assert!(
        !redis
            .command(&["KEYS", "roomcast:room:{brief}:*"])
            .unwrap()
            .is_empty()
    );

    ws.close(None).await.unwrap();
    drop(ws);
    eventually("the unsubscribe", || {
        channels().iter().all(|c| !c.contains("brief"))
    })
    .await;
    eventually("the keys to expire", || {
        redis.command(&["KEYS", "roomcast:*"]).unwrap().is_empty()
    })
    .await;
}

/// Reads chat frames until `last` arrives; asserts every seq once and in order.
async fn collect_until(ws: &mut Ws, last: u64, seen: &mut Vec<u64>) {
    while seen.last().copied().unwrap_or(0) < last {
        let frame = recv_unless_presence(ws).await;
        if frame.get("type").is_some() {
            panic!("unexpected notice {frame}");
        }
        let seq = frame["seq"].as_u64().unwrap();
        assert_eq!(
            seq,
            seen.last().copied().unwrap_or(0) + 1,
            "gap or duplicate: {seen:?} then {seq}"
        );
        seen.push(seq);
    }
}

#[tokio::test]
async fn pubsub_kills_and_redis_restarts_lose_nothing() {
    if !RedisServer::available() {
        return;
    }
    let mut redis = RedisServer::start();
    // Processes: the test reads a's log.
    let url = redis.url();
    let env = [
        ("ROOMCAST_REDIS_URL", url.as_str()),
        ("ROOMCAST_RATE", "100000"),
        ("ROOMCAST_BURST", "100000"),
    ];
    let (a, b) = (Server::start(&env), Server::start(&env));
    a.wait_metric("roomcast_ready", 1).await;
    b.wait_metric("roomcast_ready", 1).await;
    let mut members = Vec::new();
    for server in [&a, &b] {
        for _ in 0..2 {
            let mut ws = connect(&server.ws_url("/ws/chat/steady/"), true).await;
            welcome(&mut ws).await;
            members.push(ws);
        }
    }
    a.wait_metric("roomcast_rooms", 1).await;
    b.wait_metric("roomcast_rooms", 1).await;
    // A healthy connection stays up across the broker's keep-alive pings.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.metric("roomcast_broker_reconnects_total").await, 0);
    assert!(
        !a.logs()
            .iter()
            .any(|line| line.contains("redis connection lost"))
    );

    // A steady publisher on instance a, every member reading all along.
    const TOTAL: u64 = 300;
    let (mut publisher_out, mut publisher_in) = members.remove(0).split();
    let publishing = tokio::spawn(async move {
        for n in 1..=TOTAL {
            let frame = serde_json::json!({ "message": format!("m{n}") }).to_string();
            publisher_out.send(Message::text(frame)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        publisher_out
    });
    let own_copies = tokio::spawn(async move {
        let mut last = 0;
        while last < TOTAL {
            let message = tokio::time::timeout(WAIT, publisher_in.next())
                .await
                .expect("publisher starved");
            if let Some(Ok(Message::Text(text))) = message {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                if is_presence(&frame) {
                    continue;
                }
                assert_eq!(
                    frame["seq"].as_u64(),
                    Some(last + 1),
                    "publisher saw {frame}"
                );
                last += 1;
            }
        }
    });
    let readers: Vec<_> = members
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                collect_until(&mut ws, TOTAL, &mut seen).await;
                seen
            })
        })
        .collect();

    // Mid-traffic: cut the pub/sub connections; each instance reconnects and fills the gap.
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis
        .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .unwrap();
    // Then Redis goes away: both instances turn unready, publishes are held, sockets stay open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.stop();
    a.wait_metric("roomcast_ready", 0).await;
    b.wait_metric("roomcast_ready", 0).await;
    assert_eq!(http::get(a.addr(), "/healthz").await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    a.wait_metric("roomcast_ready", 1).await;
    b.wait_metric("roomcast_ready", 1).await;

    let _publisher = publishing.await.unwrap();
    own_copies.await.unwrap();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), (1..=TOTAL).collect::<Vec<_>>());
    }
    // One reconnect after the kill, one after the restart.
    assert_eq!(a.metric("roomcast_broker_reconnects_total").await, 2);
}

#[tokio::test]
async fn without_redis_the_server_starts_unready_and_becomes_ready_when_it_answers() {
    if !RedisServer::available() {
        return;
    }
    let port = testkit::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let server = InProcess::start(&[("ROOMCAST_REDIS_URL", url.as_str())]);
    assert_eq!(http::get(server.addr(), "/readyz").await.status, 503);
    let upgrade = "GET /ws/chat/early/ HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let refused = http::exchange(server.addr(), upgrade.as_bytes()).await;
    assert_eq!(refused.status, 503, "{refused:?}");

    // Bring Redis up on the port the server is already trying.
    let redis = RedisServer::start_on(port, &[]);
    server.wait_metric("roomcast_ready", 1).await;
    let mut ws = connect(&server.ws_url("/ws/chat/early/"), false).await;
    send_chat(&mut ws, "made it").await;
    assert_eq!(chat(&recv_json(&mut ws).await), ("made it".to_string(), 1));
    // The server goes first, while Redis still answers.
    drop(ws);
    drop(server);
    drop(redis);
}

#[tokio::test]
async fn a_full_hold_queue_answers_with_an_error_never_a_hang() {
    if !RedisServer::available() {
        return;
    }
    let mut redis = RedisServer::start();
    let server = instance(&redis, &[("ROOMCAST_PUBLISH_QUEUE", "3")]).await;
    let mut extended = connect(&server.ws_url("/ws/chat/held/"), true).await;
    welcome(&mut extended).await;
    let mut plain = connect(&server.ws_url("/ws/chat/held/"), false).await;
    server.wait_metric("roomcast_websockets_open", 2).await;
    redis.stop();
    server.wait_metric("roomcast_ready", 0).await;

    for n in 0..6 {
        send_chat(&mut extended, &format!("held {n}")).await;
    }
    let error = recv_json(&mut extended).await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("unavailable"))
    );
    send_chat(&mut plain, "one too many").await;
    assert_eq!(expect_close(&mut plain).await.0, 1013);
    assert!(server.metric("roomcast_publish_errors_total").await >= 2);

    // The held publishes go out, in order, when Redis returns.
    redis.restart();
    server.wait_metric("roomcast_ready", 1).await;
    let mut delivered = HashMap::new();
    while delivered.len() < 3 {
        match next_message(&mut extended).await {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                if is_presence(&frame) {
                    continue;
                }
                if frame.get("type").is_none() {
                    delivered.insert(
                        frame["seq"].as_u64().unwrap(),
                        frame["message"].as_str().unwrap().to_string(),
                    );
                } else {
                    assert_eq!(frame["code"], "unavailable");
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delivered.get(&1).map(String::as_str), Some("held 0"));
    assert_eq!(delivered.get(&3).map(String::as_str), Some("held 2"));
    let _ = extended.send(Message::Close(None)).await;
}

#[tokio::test]
async fn a_stalled_redis_delays_messages_but_never_hangs_or_loses_them() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let server = instance(&redis, &[]).await;
    let mut member = connect(&server.ws_url("/ws/chat/stalled/"), true).await;
    welcome(&mut member).await;
    server.wait_metric("roomcast_rooms", 1).await;

    // Redis stops answering for 3 s, longer than the broker's 2 s timeout for any reply.
    let stall = redis.stall(Duration::from_secs(3));
    let started = Instant::now();
    for n in 1..=5 {
        send_chat(&mut member, &format!("during {n}")).await;
    }
    // The session itself stays responsive: pings are answered while publishes wait.
    member
        .send(Message::Ping(b"still there?".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(
        Duration::from_secs(1),
        futures_util::StreamExt::next(&mut member),
    )
    .await;
    assert!(
        matches!(pong, Ok(Some(Ok(Message::Pong(_))))),
        "no pong while Redis stalls: {pong:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let mut seen = Vec::new();
    collect_until(&mut member, 5, &mut seen).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Redis was not actually stalled"
    );
    stall.join().unwrap();
    server.wait_metric("roomcast_ready", 1).await;
}
