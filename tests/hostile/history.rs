//! The history budget: forty rooms filled with the largest messages hold no more than
//! `ROOMCAST_HISTORY_BUDGET_BYTES` together, in history and in RSS, and a resume into a room
//! the budget trimmed is told so.

use futures_util::SinkExt;
use futures_util::future::join_all;
use testkit::raw_ws::chat_text;
use testkit::rss::Rss;
use testkit::ws::{Ws, chat, connect, recv_json};
use testkit::{Endpoint, Server};
use tokio_tungstenite::tungstenite::Message;

use super::{attacked, figure, welcome};

const ROOMS: usize = 40;
const PER_ROOM: u64 = 20;
/// The largest message the server takes (`ROOMCAST_MAX_MESSAGE_BYTES`, 64 KiB).
const MESSAGE_BYTES: usize = 64 * 1024;
const BUDGET_MIB: u64 = 16;
/// What a filling connection may cost besides history: its buffers, the message it is
/// receiving, the frame being fanned out.
const PER_CONNECTION_KIB: u64 = 128;
/// The whole bound is about 27 MiB. The growth measures about 20 MiB; without the budget,
/// each room keeps its 1 MiB (`ROOMCAST_HISTORY_BYTES`) and it is about 42 MiB.
const SLACK_MIB: u64 = 6;

/// One room filled by one connection, each message sent after the last one came back.
async fn fill(server: &Server, room: usize) -> Ws {
    let mut ws = connect(&server.ws_url(&format!("/ws/chat/hist-{room}/")), false).await;
    let text = chat_text(MESSAGE_BYTES);
    for seq in 1..=PER_ROOM {
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(chat(&recv_json(&mut ws).await).1, seq, "room {room}");
    }
    ws
}

#[tokio::test]
async fn forty_rooms_of_large_messages_stay_under_the_history_budget() {
    let budget = (BUDGET_MIB << 20).to_string();
    let server = attacked(&[("ROOMCAST_HISTORY_BUDGET_BYTES", &budget)]);
    let rss = Rss::baseline(server.pid()).await;
    // The fillers stay connected: an embedded room's history lives while it has members.
    let fillers = join_all((0..ROOMS).map(|room| fill(&server, room))).await;

    let peak = rss.peak_growth_kib();
    let settled = rss.growth_kib().await;
    let bound = (BUDGET_MIB + SLACK_MIB) * 1024 + ROOMS as u64 * PER_CONNECTION_KIB;
    figure(
        "history budget",
        &format!(
            "{ROOMS} rooms x {PER_ROOM} messages of {MESSAGE_BYTES} B (~{} MiB sent) under a \
             {BUDGET_MIB} MiB budget: RSS growth {settled} KiB settled, {peak} KiB at peak \
             (bound {bound} KiB)",
            (ROOMS as u64 * PER_ROOM * MESSAGE_BYTES as u64) >> 20
        ),
    );
    assert!(
        peak <= bound,
        "RSS grew {peak} KiB at peak, over {bound} KiB"
    );

    // A resume from seq 1 in every room: each is told its history was cut, and what is
    // left (the newest messages, in order) fits the budget in all.
    let mut kept_bytes = 0;
    let mut resumers = Vec::new();
    for room in 0..ROOMS {
        let url = server.ws_url(&format!("/ws/chat/hist-{room}/?since=1"));
        let mut resumed = connect(&url, true).await;
        assert_eq!(welcome(&mut resumed).await["seq"], PER_ROOM);
        let reset = recv_json(&mut resumed).await;
        assert_eq!(
            (reset["type"].as_str(), reset["reason"].as_str()),
            (Some("reset"), Some("history")),
            "room {room}: {reset}"
        );
        let mut expected = None;
        loop {
            let frame = recv_json(&mut resumed).await;
            kept_bytes += frame.to_string().len();
            let seq = chat(&frame).1;
            if let Some(expected) = expected {
                assert_eq!(seq, expected, "room {room}: a gap in the replay");
            }
            assert!(seq > 2, "room {room} kept seq {seq}: nothing was trimmed");
            if seq == PER_ROOM {
                break;
            }
            expected = Some(seq + 1);
        }
        resumers.push(resumed);
    }
    figure(
        "history budget",
        &format!("history left in all rooms: {} KiB", kept_bytes >> 10),
    );
    assert!(
        kept_bytes as u64 <= BUDGET_MIB << 20,
        "{kept_bytes} bytes of history kept, over the {BUDGET_MIB} MiB budget"
    );
    assert_eq!(
        server.metric("roomcast_websockets_open").await,
        ROOMS as u64 + ROOMS as u64,
        "every filler and resumer still connected"
    );
    drop((fillers, resumers));
}
