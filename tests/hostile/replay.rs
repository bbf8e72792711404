//! Replay pins no memory: four clients that resume with `?since=0` into rooms with 1 MiB
//! of history and never read cost no more than four live members of such rooms that never
//! read, with the embedded broker and with Redis.

use futures_util::SinkExt;
use testkit::Endpoint;
use testkit::raw_ws::{Event, Open, RawWs, TEXT, chat_text};
use testkit::redis::RedisServer;
use testkit::rss::Rss;
use testkit::ws::{Ws, chat, connect, recv_json};
use tokio_tungstenite::tungstenite::Message;

use super::{LONG_CLOCK, attacked, attacked_on, figure};

const STALLED: u64 = 4;
/// 20 messages of 64 KiB: past the room's 1 MiB of history (`ROOMCAST_HISTORY_BYTES`).
const MESSAGES: u64 = 20;
const MESSAGE_BYTES: usize = 64 * 1024;
/// Frames a live member that does not read holds without being cut: its socket buffers take
/// two or three, its send queue (512 KiB) the rest.
const SLOW_READER_FRAMES: u64 = 8;
/// Both kinds of stalled client together stay under this.
const BOUND_KIB: u64 = 4 * 1024;
/// Resumers may cost this much more than live members: what the measurement wobbles by.
const NOISE_KIB: u64 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stalled {
    /// Each joins its room with `?since=0`: the room's whole history is replayed to it.
    Resumers,
    /// Each joins its room live, and the room then gets as much as its send queue holds.
    LiveMembers,
}

/// `count` large messages from `keeper`, each read back before the next.
async fn publish(keeper: &mut Ws, first_seq: u64, count: u64) {
    let text = chat_text(MESSAGE_BYTES);
    for seq in first_seq..first_seq + count {
        keeper.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(chat(&recv_json(keeper).await).1, seq);
    }
}

/// RSS growth of a fresh server once `STALLED` clients of the kind, each in a room of its
/// own with 1 MiB of history, hold what they do not read.
async fn growth(redis: Option<&RedisServer>, stalled: Stalled) -> u64 {
    let server = match redis {
        Some(redis) => attacked_on(redis, LONG_CLOCK).await,
        None => attacked(LONG_CLOCK),
    };
    // Each room has a keeper: an embedded room's history lives while it has members.
    let mut keepers = Vec::new();
    for room in 0..STALLED {
        let url = server.ws_url(&format!("/ws/chat/archive-{stalled:?}-{room}/"));
        let mut keeper = connect(&url, false).await;
        publish(&mut keeper, 1, MESSAGES).await;
        keepers.push(keeper);
    }
    let rss = Rss::baseline(server.pid()).await;

    let mut clients = Vec::new();
    for room in 0..STALLED {
        let path = match stalled {
            Stalled::Resumers => format!("/ws/chat/archive-{stalled:?}-{room}/?since=0"),
            Stalled::LiveMembers => format!("/ws/chat/archive-{stalled:?}-{room}/"),
        };
        let open = Open::path(&path).receive_buffer(4096);
        clients.push(RawWs::connect(server.addr(), open).await);
    }
    let open = 2 * STALLED;
    server.wait_metric("roomcast_websockets_open", open).await;
    if stalled == Stalled::LiveMembers {
        for keeper in &mut keepers {
            publish(keeper, MESSAGES + 1, SLOW_READER_FRAMES).await;
        }
    }
    let grown = rss.growth_kib().await;
    // Still connected and not cut, each stuck in what it was sent: a welcome first for a
    // resumer.
    assert_eq!(server.metric("roomcast_websockets_open").await, open);
    assert_eq!(server.metric("roomcast_slow_reader_drops_total").await, 0);
    for client in &mut clients {
        let Event::Frame(first) = client.next_event(testkit::WAIT).await else {
            panic!("{stalled:?}: nothing was sent");
        };
        assert_eq!(first.opcode, TEXT);
        let is_welcome = first.text().contains(r#""type":"welcome""#);
        assert_eq!(is_welcome, stalled == Stalled::Resumers, "{}", first.text());
    }
    grown
}

async fn compare(broker: &str, redis: Option<&RedisServer>) {
    let resumers = growth(redis, Stalled::Resumers).await;
    let live = growth(redis, Stalled::LiveMembers).await;
    figure(
        "replay",
        &format!(
            "{broker}: RSS growth with {STALLED} unread resumers of 1 MiB of history \
             {resumers} KiB, with {STALLED} unread live members {live} KiB"
        ),
    );
    assert!(
        resumers + live < BOUND_KIB,
        "{broker}: {resumers} KiB + {live} KiB, over {BOUND_KIB} KiB"
    );
    assert!(
        resumers <= live + NOISE_KIB,
        "{broker}: stalled replays cost {resumers} KiB, live members {live} KiB"
    );
}

#[tokio::test]
async fn unread_replays_pin_no_more_than_slow_readers_embedded() {
    compare("embedded", None).await;
}

#[tokio::test]
async fn unread_replays_pin_no_more_than_slow_readers_redis() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start_with(&["--appendonly", "no"]);
    compare("redis", Some(&redis)).await;
}
