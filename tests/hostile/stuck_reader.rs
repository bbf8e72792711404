//! A reader that stops reading with a full socket buffer: its room floods it with large
//! messages, the server's writes to it stall, and it is cut within the peer timeout of
//! that, while the others in the room get every message.

use std::time::Duration;

use testkit::raw_ws::{Open, PONG, RawWs};
use testkit::ws::{Ws, chat, connect, recv_json, send_chat};
use testkit::{Endpoint, Server, WAIT, metrics};
use tokio::time::Instant;

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
        &format!(
            "{FLOOD} x {FLOOD_BYTES} B flooded in {flooded_in:?}; cut {cut_after:?} after \
             the flood began"
        ),
    );
    assert!(
        cut_after <= PEER_TIMEOUT + LATE,
        "cut {cut_after:?} after its writes could first stall; expected at most {:?}",
        PEER_TIMEOUT + LATE
    );
    // Its socket: the server's end is gone, so what is left reads to an end or a reset.
    assert!(
        stuck.ends_within(Duration::from_secs(2)).await,
        "the server dropped the session but the stuck client's connection stays open"
    );

    // The others were not affected: still connected, still getting everything in order.
    round_trip(&mut publisher, &mut healthy, &mut seq, "after").await;
    assert_eq!(websockets_open(&server).await, 2);
}
