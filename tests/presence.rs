//! Presence: who is in a room, as the welcome lists it and join and leave events change it,
//! with the embedded broker and across instances on a real redis-server: a reconnect within
//! the linger is neither a leave nor a join, a blue-green swap makes none, and a crashed
//! instance's members leave within the presence TTL.
//!
//! The Redis tests need `redis-server`; without it they are skipped, or fail when `CI` is set.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::redis::RedisServer;
use testkit::ws::{EXTENDED, Ws, connect_with_headers, next_message};
use testkit::{Endpoint, InProcess, Roomcast, Server, WAIT};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "a-test-secret-of-at-least-thirty-two-bytes";
/// Short, so the tests see lingers run out; long enough for a reconnect to come back in.
const LINGER_MS: &str = "1500";

fn token(id: &str, name: &str) -> String {
    let exp = roomcast::auth::now_secs() + 600;
    let claims = json!({ "sub": id, "name": name, "aud": "roomcast", "exp": exp });
    roomcast::auth::jwt::sign(&claims, SECRET.as_bytes())
}

fn env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("ROOMCAST_AUTH", "optional"),
        ("ROOMCAST_AUTH_SECRET", SECRET),
        ("ROOMCAST_PRESENCE_LINGER_MS", LINGER_MS),
    ];
    env.extend_from_slice(extra);
    env
}

/// An extended client, as `user` (anonymous when `None`); its welcome.
async fn enter(server: &impl Endpoint, room: &str, user: Option<(&str, &str)>) -> (Ws, Value) {
    let url = server.ws_url(&format!("/ws/chat/{room}/"));
    let bearer = user.map(|(id, name)| format!("Bearer {}", token(id, name)));
    let mut headers = vec![EXTENDED];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer.as_str()));
    }
    let mut ws = connect_with_headers(&url, &headers).await;
    let welcome = next_frame(&mut ws).await.expect("a welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// The next text frame within `WAIT`, or `None` if the connection ended.
async fn next_frame(ws: &mut Ws) -> Option<Value> {
    match next_message(ws).await {
        Some(Ok(Message::Text(text))) => Some(serde_json::from_str(text.as_str()).unwrap()),
        _ => None,
    }
}

/// Presence events (`join`, `leave`) that arrive within `window`, as `"join Ada"`.
async fn events_within(ws: &mut Ws, window: Duration) -> Vec<String> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout_at(deadline, futures_util::StreamExt::next(ws)).await
    {
        if let Message::Text(text) = message {
            let frame: Value = serde_json::from_str(text.as_str()).unwrap();
            if let Some(kind @ ("join" | "leave")) = frame["type"].as_str() {
                events.push(format!(
                    "{kind} {}",
                    frame["user"]["name"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    events
}

/// The next presence event, waiting up to `limit`.
async fn next_event(ws: &mut Ws, limit: Duration) -> Option<(String, Value)> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let next = tokio::time::timeout_at(deadline, futures_util::StreamExt::next(ws)).await;
        let Ok(Some(Ok(Message::Text(text)))) = next else {
            return None;
        };
        let frame: Value = serde_json::from_str(text.as_str()).unwrap();
        if let Some(kind @ ("join" | "leave")) = frame["type"].as_str() {
            return Some((kind.to_string(), frame));
        }
    }
}

fn names(welcome: &Value) -> Vec<String> {
    let mut names: Vec<String> = welcome["members"]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn the_welcome_lists_who_is_here_and_joins_and_leaves_are_told() {
    let server = InProcess::start(&env(&[]));
    let (mut ada, welcome) = enter(&server, "lobby", Some(("1", "Ada"))).await;
    assert_eq!(welcome["members"]["count"], 1);
    let (_anonymous, welcome) = enter(&server, "lobby", None).await;
    assert_eq!(
        welcome["members"]["count"], 2,
        "anonymous connections are counted"
    );
    assert_eq!(names(&welcome), ["Ada"], "and not listed");
    let (bob, welcome) = enter(&server, "lobby", Some(("2", "Bob"))).await;
    assert_eq!(names(&welcome), ["Ada", "Bob"]);
    let (kind, join) = next_event(&mut ada, WAIT).await.expect("Bob's join");
    assert_eq!(
        (kind.as_str(), join["user"]["id"].as_str()),
        ("join", Some("2"))
    );
    assert_eq!(join["count"], 3);
    assert!(
        join.get("message").is_none(),
        "a notice is never a chat frame"
    );

    drop(bob);
    let started = Instant::now();
    let (kind, leave) = next_event(&mut ada, WAIT).await.expect("Bob's leave");
    assert_eq!(
        (kind.as_str(), leave["user"]["name"].as_str()),
        ("leave", Some("Bob"))
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "the leave waited for the linger: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_reconnect_within_the_linger_is_neither_a_leave_nor_a_join() {
    let server = InProcess::start(&env(&[]));
    let (mut watcher, _) = enter(&server, "lobby", Some(("0", "Watcher"))).await;
    let (ada, _) = enter(&server, "lobby", Some(("1", "Ada"))).await;
    assert_eq!(
        events_within(&mut watcher, Duration::from_millis(300)).await,
        ["join Ada"]
    );
    for _ in 0..3 {
        drop(ada_reconnects(&server).await);
    }
    drop(ada);
    let (_ada_again, welcome) = enter(&server, "lobby", Some(("1", "Ada"))).await;
    assert_eq!(welcome["members"]["count"], 2);
    let seen = events_within(&mut watcher, Duration::from_millis(2500)).await;
    assert!(seen.is_empty(), "reconnects made presence events: {seen:?}");
}

/// Whether a `members` frame with `count` arrives within `limit`.
async fn count_reaches(ws: &mut Ws, count: u64, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let next = tokio::time::timeout_at(deadline, futures_util::StreamExt::next(ws)).await;
        let Ok(Some(Ok(Message::Text(text)))) = next else {
            return false;
        };
        let frame: Value = serde_json::from_str(text.as_str()).unwrap();
        if frame["type"] == "members" && frame["count"] == count {
            return true;
        }
    }
}

/// Anonymous members make no events; in a small room the count follows them within the
/// broker's tick (1 s embedded, 2 s on Redis).
async fn anonymous_members_change_the_count(server: &impl Endpoint) {
    let (mut first, welcome) = enter(server, "anonymous", None).await;
    assert_eq!(welcome["members"]["count"], 1, "{welcome}");
    let (second, _) = enter(server, "anonymous", None).await;
    let limit = Duration::from_secs(4);
    assert!(count_reaches(&mut first, 2, limit).await, "no count of 2");
    drop(second);
    assert!(count_reaches(&mut first, 1, limit).await, "no count of 1");
}

#[tokio::test]
async fn anonymous_members_are_counted_promptly_embedded_and_on_redis() {
    anonymous_members_change_the_count(&InProcess::start(&env(&[]))).await;
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let server = on_redis(&redis, "60000");
    ready(&server).await;
    anonymous_members_change_the_count(&server).await;
}

async fn ada_reconnects(server: &InProcess) -> Ws {
    enter(server, "lobby", Some(("1", "Ada"))).await.0
}

#[tokio::test]
async fn the_presence_api_answers_backends() {
    let key = "an-api-key-of-thirty-two-bytes-or-more";
    let server = InProcess::start(&env(&[("ROOMCAST_API_KEY", key)]));
    let (_ada, _) = enter(&server, "lobby", Some(("1", "Ada"))).await;
    let request = format!(
        "GET /api/rooms/lobby/presence HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\
         Connection: close\r\n\r\n"
    );
    let response = testkit::http::exchange(server.addr(), request.as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    let body: Value = serde_json::from_str(&response.text()).unwrap();
    assert_eq!(body["count"], 1);
    assert_eq!(body["users"][0]["name"], "Ada");
    let anonymous =
        "GET /api/rooms/lobby/presence HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let refused = testkit::http::exchange(server.addr(), anonymous.as_bytes()).await;
    assert_eq!(refused.status, 401);
}

/// A roomcast process on `redis` with presence that expires in `ttl_ms`.
fn on_redis(redis: &RedisServer, ttl_ms: &str) -> Server {
    let url = redis.url();
    let extra = [
        ("ROOMCAST_REDIS_URL", url.as_str()),
        ("ROOMCAST_PRESENCE_TTL_MS", ttl_ms),
        ("ROOMCAST_SHUTDOWN_DELAY_MS", "0"),
    ];
    Roomcast::debug().envs(&env(&extra)).start()
}

async fn ready(server: &Server) {
    server.wait_metric("roomcast_ready", 1).await;
}

#[tokio::test]
async fn presence_crosses_instances_and_a_crashed_ones_members_leave_within_the_ttl() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let (a, mut b) = (on_redis(&redis, "3000"), on_redis(&redis, "3000"));
    ready(&a).await;
    ready(&b).await;
    let (mut ada, _) = enter(&a, "shared", Some(("1", "Ada"))).await;
    let (_carol, welcome) = enter(&b, "shared", Some(("3", "Carol"))).await;
    assert_eq!(
        names(&welcome),
        ["Ada", "Carol"],
        "the welcome counts every instance"
    );
    let (kind, join) = next_event(&mut ada, WAIT).await.expect("Carol's join on a");
    assert_eq!(
        (kind.as_str(), join["user"]["name"].as_str()),
        ("join", Some("Carol"))
    );

    // b dies without a word: Carol's entry is no longer refreshed and expires.
    b.signal("KILL");
    let _ = b.wait_exit(WAIT);
    let crashed = Instant::now();
    let (kind, leave) = next_event(&mut ada, Duration::from_secs(15))
        .await
        .expect("Carol leaves after the crash");
    let took = crashed.elapsed();
    assert_eq!(
        (kind.as_str(), leave["user"]["name"].as_str()),
        ("leave", Some("Carol"))
    );
    eprintln!("presence: a crashed instance's member left {took:?} after the crash (TTL 3 s)");
    assert!(took <= Duration::from_secs(3 + 3), "left after {took:?}");
}

#[tokio::test]
async fn a_swap_makes_no_leave_and_no_join_and_later_leaves_come_after_the_linger() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let (mut blue, green) = (on_redis(&redis, "60000"), on_redis(&redis, "60000"));
    ready(&blue).await;
    ready(&green).await;
    let (mut watcher, _) = enter(&green, "swap", Some(("0", "Watcher"))).await;
    let mut on_blue = Vec::new();
    for (id, name) in [("1", "Ada"), ("2", "Bob")] {
        on_blue.push(enter(&blue, "swap", Some((id, name))).await.0);
    }
    let joins = events_within(&mut watcher, Duration::from_millis(500)).await;
    assert_eq!(joins.len(), 2, "{joins:?}");

    // Blue shuts down; every client gets 1012 and comes back on green, as the page does.
    blue.signal("TERM");
    for ws in &mut on_blue {
        while next_frame(ws).await.is_some() {}
    }
    let mut on_green = Vec::new();
    for (id, name) in [("1", "Ada"), ("2", "Bob")] {
        on_green.push(enter(&green, "swap", Some((id, name))).await.0);
    }
    let _ = blue.wait_exit(WAIT);
    let seen = events_within(&mut watcher, Duration::from_millis(4000)).await;
    eprintln!("presence: events during the swap: {seen:?}");
    assert!(seen.is_empty(), "the swap made presence events: {seen:?}");

    // Blue let go of its entries as it stopped, so Ada closing her page on green is a leave
    // after the linger, not after the 60 s presence TTL of blue's old entry.
    drop(on_green.remove(0));
    let closed = Instant::now();
    let (kind, leave) = next_event(&mut watcher, Duration::from_secs(10))
        .await
        .expect("Ada leaves after the linger");
    assert_eq!(
        (kind.as_str(), leave["user"]["name"].as_str()),
        ("leave", Some("Ada"))
    );
    eprintln!(
        "presence: a leave after a swap came {:?} after the close",
        closed.elapsed()
    );
}
