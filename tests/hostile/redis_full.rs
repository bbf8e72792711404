//! Redis full under `noeviction`: once a fill has used Redis's memory, a sender in any
//! room gets an error within seconds, never silence; `/readyz` stays 200; members of
//! existing rooms stay connected and a reconnect to one is welcomed; failures are counted.

use std::time::Duration;

use futures_util::future::join_all;
use testkit::raw_ws::{Open, RawWs, chat_text};
use testkit::ws::{Ws, chat, connect, expect_close, recv_unless_presence, send_chat};
use testkit::{Endpoint, Server};
use tokio::time::Instant;

use super::{REDIS_MAXMEMORY, ReadinessWatch, attacked_on, figure, small_redis, welcome};

const FILL_ROOMS: usize = 6;
const FILL_BYTES: usize = 32 * 1024;
/// Per room: past its 1 MiB of history, so the rooms together outgrow `MAXMEMORY`.
const FILL_MAX: u64 = 48;
/// A refused publish is retried for 2 s, with a backoff of up to 2 s before and between
/// the tries: its sender hears within about 4 s.
const ERROR_WITHIN: Duration = Duration::from_secs(6);

/// Fills one room until Redis refuses: how many messages it took, whether it was refused,
/// and the filler, still connected.
async fn fill(server: &Server, room: usize) -> (u64, bool, Ws) {
    let mut ws = connect(&server.ws_url(&format!("/ws/chat/fill-{room}/")), true).await;
    welcome(&mut ws).await;
    let text = chat_text(FILL_BYTES);
    let body: String = serde_json::from_str::<serde_json::Value>(&text).unwrap()["message"]
        .as_str()
        .unwrap()
        .into();
    for sent in 1..=FILL_MAX {
        send_chat(&mut ws, &body).await;
        let frame = recv_unless_presence(&mut ws).await;
        match frame["type"].as_str() {
            None => assert_eq!(chat(&frame).1, sent, "fill-{room}"),
            Some("error") => {
                assert_eq!(frame["code"], "unavailable", "{frame}");
                return (sent, true, ws);
            }
            Some(_) => panic!("fill-{room}: {frame}"),
        }
    }
    (FILL_MAX, false, ws)
}

/// A member of an existing room sends once Redis is full; what it hears and when.
async fn refused_in_time(ws: &mut Ws, extended: bool) -> Duration {
    let sent = Instant::now();
    send_chat(ws, "after the fill").await;
    if extended {
        let frame = recv_unless_presence(ws).await;
        assert_eq!(
            (frame["type"].as_str(), frame["code"].as_str()),
            (Some("error"), Some("unavailable")),
            "{frame}"
        );
    } else {
        assert_eq!(expect_close(ws).await.0, 1013);
    }
    sent.elapsed()
}

#[tokio::test]
async fn a_full_redis_without_eviction_refuses_publishes_out_loud() {
    let Some(redis) = small_redis("noeviction") else {
        return;
    };
    let server = attacked_on(&redis, &[]).await;
    let readiness = ReadinessWatch::start(server.addr());

    // Rooms that exist before the fill, each with a message in its history.
    let mut extended = connect(&server.ws_url("/ws/chat/kept/"), true).await;
    welcome(&mut extended).await;
    let mut bystander = connect(&server.ws_url("/ws/chat/kept/"), false).await;
    let mut plain = connect(&server.ws_url("/ws/chat/kept-plain/"), false).await;
    send_chat(&mut extended, "before").await;
    for ws in [&mut extended, &mut bystander] {
        assert_eq!(chat(&recv_unless_presence(ws).await), ("before".into(), 1));
    }
    send_chat(&mut plain, "before").await;
    assert_eq!(chat(&recv_unless_presence(&mut plain).await).1, 1);

    let fills = join_all((0..FILL_ROOMS).map(|room| fill(&server, room))).await;
    let sent: u64 = fills.iter().map(|(sent, ..)| sent).sum();
    let used = redis.info_number("memory", "used_memory").unwrap_or(0);
    figure(
        "redis noeviction",
        &format!(
            "{sent} messages of {FILL_BYTES} B over {FILL_ROOMS} rooms until refused; \
             used_memory {used} B of {REDIS_MAXMEMORY}"
        ),
    );
    assert!(
        fills.iter().any(|(_, refused, _)| *refused),
        "Redis never refused the fill of {sent} messages"
    );
    // Redis hovers at its limit as its own buffers (the pipeline being read, pub/sub output)
    // come and go, so a small write could slip in again. A limit under what the rooms now
    // hold keeps it full for the rest of the test, as more writers would.
    let pinned = used.saturating_sub(1 << 20).to_string();
    let set = redis.command(&["CONFIG", "SET", "maxmemory", &pinned]);
    assert_eq!(set, Some(vec!["+OK".to_string()]));

    // Senders in rooms that existed: told within seconds, the extended one stays.
    let (extended_after, plain_after) = tokio::join!(
        refused_in_time(&mut extended, true),
        refused_in_time(&mut plain, false)
    );
    figure(
        "redis noeviction",
        &format!("refusal heard after {extended_after:?} (error frame), {plain_after:?} (1013)"),
    );
    for after in [extended_after, plain_after] {
        assert!(after <= ERROR_WITHIN, "heard after {after:?}");
    }
    // Everyone but the plain sender is still connected: the two in `kept`, the fillers.
    server
        .wait_metric("roomcast_websockets_open", 2 + FILL_ROOMS as u64)
        .await;

    // Joining an existing room only reads: it works, and its history replays.
    let mut again = connect(&server.ws_url("/ws/chat/kept/?since=0"), true).await;
    let hello = welcome(&mut again).await;
    assert_eq!(
        (hello["room"].as_str(), hello["seq"].as_u64()),
        (Some("kept"), Some(1))
    );
    assert_eq!(
        chat(&recv_unless_presence(&mut again).await),
        ("before".into(), 1)
    );
    // A new room needs a write: refused with 503, the connection answered.
    match RawWs::open(server.addr(), Open::path("/ws/chat/brand-new/")).await {
        Ok(Err(response)) => assert_eq!(response.status, 503, "{response:?}"),
        Ok(Ok(_)) => panic!("a new room was created in a full Redis"),
        Err(error) => panic!("the upgrade failed instead of being answered: {error}"),
    }

    let failures = server.metric("roomcast_publish_failures_total").await;
    let refused_fills = fills.iter().filter(|(_, refused, _)| *refused).count() as u64;
    assert!(
        failures >= refused_fills + 2,
        "{failures} publish failures counted; {refused_fills} fills and 2 senders were refused"
    );
    let statuses = readiness.stop().await;
    assert!(
        statuses.len() >= 10,
        "readiness polled {} times",
        statuses.len()
    );
    assert!(
        statuses.iter().all(|status| *status == 200),
        "/readyz answered {statuses:?}"
    );
    drop((bystander, fills));
}
