//! A reader that stops reading with a full socket buffer: its room floods it with large
//! messages, the server's writes to it stall, and it is cut within the peer timeout of
//! that, while the others in the room get every message. The same holds for a replay,
//! echoes and error frames that are never read.

use std::time::Duration;

use futures_util::SinkExt;
use testkit::raw_ws::{Open, PONG, RawWs, TEXT, chat_text};
use testkit::ws::{Ws, chat, connect, recv_json, send_chat};
use testkit::{Endpoint, Server, WAIT, metrics};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{LATE, PEER_TIMEOUT, SHORT_CLOCK, attacked, figure};

const FLOOD: u64 = 40;
const FLOOD_BYTES: usize = 32 * 1024;
/// The stuck client's SO_RCVBUF: the kernel's smallest, about.
const RECEIVE_BUFFER: u32 = 4096;

/// One message from the publisher, read back by it and by the healthy member: both stay
/// heard (reading answers the heartbeat's pings) and both see every seq in order.
async fn round_trip(publisher: &mut Ws, healthy: &mut Ws, seq: &mut u64, body: &str) {
    send_chat(publisher, body).await;
    *seq += 1;
    for ws in [publisher, healthy] {
        assert_eq!(chat(&recv_json(ws).await).1, *seq);
    }
}

async fn websockets_open(server: &Server) -> u64 {
    metrics::read(server.addr(), "roomcast_websockets_open").await
}

/// Polls until no WebSocket is open; how long after `since` that was.
async fn all_cut(server: &Server, since: Instant) -> Duration {
    loop {
        if websockets_open(server).await == 0 {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < WAIT,
            "a stuck client still connected after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_in_time(what: &str, cut_after: Duration) {
    figure(
        what,
        &format!("cut {cut_after:?} after its writes could first stall"),
    );
    assert!(
        cut_after <= PEER_TIMEOUT + LATE,
        "{what}: cut {cut_after:?} after its writes could first stall; expected at most {:?}",
        PEER_TIMEOUT + LATE
    );
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_within_the_peer_timeout() {
    let server = attacked(SHORT_CLOCK);
    let path = "/ws/chat/firehose/";
    let open = Open::path(path).receive_buffer(RECEIVE_BUFFER);
    let mut stuck = RawWs::connect(server.addr(), open).await;
    let mut publisher = connect(&server.ws_url(path), false).await;
    let mut healthy = connect(&server.ws_url(path), false).await;
    server.wait_metric("roomcast_websockets_open", 3).await;
    let mut seq = 0;

    // Past the heartbeat and half the timeout the stuck client is heard: it sends pongs
    // unasked, and it is small chat that it does not read.
    for _ in 0..8 {
        stuck.send(true, PONG, b"").await.unwrap();
        round_trip(&mut publisher, &mut healthy, &mut seq, "tick").await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(websockets_open(&server).await, 3, "cut before the flood");

    // The flood: its writes to the stuck client stall once the buffers are full, at the
    // earliest now.
    let flood_started = Instant::now();
    let body = "w".repeat(FLOOD_BYTES);
    for _ in 0..FLOOD {
        let _ = stuck.send(true, PONG, b"").await;
        round_trip(&mut publisher, &mut healthy, &mut seq, &body).await;
    }
    let flooded_in = flood_started.elapsed();

    // Small chat meanwhile, so the others stay heard and keep getting everything.
    let cut_after = loop {
        if websockets_open(&server).await == 2 {
            break flood_started.elapsed();
        }
        assert!(
            flood_started.elapsed() < WAIT,
            "the stuck reader still connected {WAIT:?} after the flood began"
        );
        let _ = stuck.send(true, PONG, b"").await;
        round_trip(&mut publisher, &mut healthy, &mut seq, "tick").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    figure(
        "stuck reader",
        &format!("{FLOOD} x {FLOOD_BYTES} B flooded in {flooded_in:?}"),
    );
    assert_in_time("stuck reader", cut_after);
    // Its socket: the server's end is gone, so what is left reads to an end or a reset.
    assert!(
        stuck.ends_within(Duration::from_secs(2)).await,
        "the server dropped the session but the stuck client's connection stays open"
    );

    // The others were not affected: still connected, still getting everything in order.
    round_trip(&mut publisher, &mut healthy, &mut seq, "after").await;
    assert_eq!(websockets_open(&server).await, 2);
}

#[tokio::test]
async fn a_resumer_that_never_reads_its_replay_is_cut_within_the_peer_timeout() {
    let server = attacked(SHORT_CLOCK);
    let path = "/ws/chat/replayed/";
    let mut keeper = connect(&server.ws_url(path), false).await;
    let text = chat_text(64 * 1024);
    for seq in 1..=16 {
        keeper.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(chat(&recv_json(&mut keeper).await).1, seq);
    }
    let joined = Instant::now();
    let open = Open::path("/ws/chat/replayed/?since=0").receive_buffer(RECEIVE_BUFFER);
    let resumer = RawWs::connect(server.addr(), open).await;
    server.wait_metric("roomcast_websockets_open", 2).await;
    // The room lives on with its history while the resumer is in it.
    drop(keeper);
    assert_in_time("unread replay", all_cut(&server, joined).await);
    drop(resumer);
}

#[tokio::test]
async fn an_echo_client_that_never_reads_is_cut_within_the_peer_timeout() {
    let mut env = SHORT_CLOCK.to_vec();
    env.push(("ROOMCAST_ECHO", "1"));
    let server = attacked(&env);
    let open = Open::path("/ws/echo").receive_buffer(RECEIVE_BUFFER);
    let mut client = RawWs::connect(server.addr(), open).await;
    let sent = Instant::now();
    // Twice what the buffers on the way back hold; the rest waits in the server's socket.
    for _ in 0..8 {
        client.send(true, TEXT, &[b'e'; FLOOD_BYTES]).await.unwrap();
    }
    assert_in_time("unread echoes", all_cut(&server, sent).await);
}

#[tokio::test]
async fn an_extended_client_that_never_reads_its_error_frames_is_cut_within_the_peer_timeout() {
    let server = attacked(SHORT_CLOCK);
    let open = Open::path("/ws/chat/errors/")
        .headers(&[testkit::ws::EXTENDED])
        .receive_buffer(RECEIVE_BUFFER);
    let mut client = RawWs::connect(server.addr(), open).await;
    let sent = Instant::now();
    // Each is answered with an error frame of about 100 bytes: several times what the
    // buffers on the way back hold.
    let invalid = testkit::raw_ws::frame(true, TEXT, b"{oops");
    client.send_raw(&invalid.repeat(4000)).await.unwrap();
    assert_in_time("unread error frames", all_cut(&server, sent).await);
}
