//! What one connection costs at worst: half a message held in the gate, nothing read, and
//! the room flooded so its send queue is nearly full.

use std::time::Duration;

use testkit::raw_ws::{Open, RawWs, TEXT, chat_text, header, masked};
use testkit::rss::Rss;
use testkit::ws::{chat, connect, recv_json, send_chat};
use testkit::{Endpoint, WAIT, metrics, wait};

use super::{attacked, figure};

const CONNECTIONS: u64 = 500;
/// Sent of each member's message: the gate's allowance, so no budget is charged.
const HALF: usize = 2048;
/// Frames flooded into the room: under the 256-frame and 512 KiB send queue, so nobody is
/// cut and each member holds its queue.
const FLOOD: u64 = 200;
const FLOOD_BYTES: usize = 2000;
/// Generous: an idle connection costs a few KiB; this one holds its queue and buffers.
const BOUND_KIB: u64 = 64;

#[tokio::test]
async fn the_worst_case_memory_per_connection_is_bounded() {
    // A long clock: nobody is cut for silence or the unfinished message while measuring.
    let server = attacked(&[
        ("ROOMCAST_HEARTBEAT_MS", "30000"),
        ("ROOMCAST_PEER_TIMEOUT_MS", "60000"),
    ]);
    let url = server.ws_url("/ws/chat/crowd/");
    let mut publisher = connect(&url, false).await;
    server.wait_metric("roomcast_websockets_open", 1).await;
    let rss = Rss::baseline(server.pid()).await;

    let text = chat_text(2 * HALF);
    let mut members = Vec::new();
    for _ in 0..CONNECTIONS {
        let open = Open::path("/ws/chat/crowd/").receive_buffer(4096);
        let mut member = RawWs::connect(server.addr(), open).await;
        member
            .send_raw(&header(true, TEXT, text.len()))
            .await
            .unwrap();
        member
            .send_raw(&masked(&text.as_bytes()[..HALF], 0))
            .await
            .unwrap();
        members.push(member);
    }
    server
        .wait_metric("roomcast_websockets_open", CONNECTIONS + 1)
        .await;

    let body = "f".repeat(FLOOD_BYTES);
    for seq in 1..=FLOOD {
        send_chat(&mut publisher, &body).await;
        assert_eq!(chat(&recv_json(&mut publisher).await).1, seq);
    }
    // Every frame queued to every member (or written on).
    let queued = FLOOD * (CONNECTIONS + 1);
    wait::until(
        "the flood queued to every member",
        WAIT,
        async || match metrics::read(server.addr(), "roomcast_messages_out_total").await {
            n if n >= queued => Ok(()),
            n => Err(format!("{n} of {queued} queued")),
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss.growth_kib().await;
    assert_eq!(
        server.metric("roomcast_websockets_open").await,
        CONNECTIONS + 1,
        "a member was cut before the reading"
    );
    let per_connection = grown as f64 / CONNECTIONS as f64;
    figure(
        "memory per connection",
        &format!(
            "{CONNECTIONS} connections, each {HALF} B into a message and {FLOOD} frames of \
             {FLOOD_BYTES} B unread: RSS {} KiB -> {} KiB, {per_connection:.1} KiB each",
            rss.baseline_kib(),
            rss.baseline_kib() + grown
        ),
    );
    assert!(
        per_connection < BOUND_KIB as f64,
        "{per_connection:.1} KiB per connection (bound {BOUND_KIB} KiB)"
    );
    drop(members);
}
