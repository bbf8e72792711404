//! Large messages in flight: many connections each half way through a large message push
//! past `ROOMCAST_INBOUND_BUDGET_BYTES`; the ones over it are closed with 1013 and RSS stays
//! under the budget plus what the connections cost. Control frames that are too long or not
//! final are refused at their header.

use std::time::Duration;

use futures_util::future::join_all;
use testkit::raw_ws::{CLOSE, Event, Open, PING, RawWs, TEXT, chat_text, header, masked};
use testkit::rss::Rss;
use testkit::{Endpoint, metrics, wait};
use tokio::time::Instant;

use super::{LONG_CLOCK, attacked, figure};

const CONNECTIONS: usize = 400;
/// What each message's header announces, and what of it is sent.
const ANNOUNCED: usize = 60 * 1024;
const SENT: usize = 30 * 1024;
const BUDGET: usize = 1 << 20;
/// What a message may hold before it draws on the budget (the gate's allowance).
const ALLOWANCE: usize = 2048;
/// What a connection costs besides its message: an idle one with a small message in flight
/// takes about 10 KiB in the debug build. Without the budget the growth is about 17 MiB.
const PER_CONNECTION_KIB: u64 = 16;
const SLACK_KIB: u64 = 2 * 1024;

/// What a connection's read saw after it sent its half message.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Held,
    Refused,
}

async fn fate(mut ws: RawWs) -> (Fate, RawWs) {
    let fate = match ws.next_event(Duration::from_secs(3)).await {
        Event::Quiet => Fate::Held,
        Event::Frame(frame) if frame.close_code() == Some(1013) => Fate::Refused,
        other => panic!("a half-sent message got {other:?}"),
    };
    (fate, ws)
}

#[tokio::test]
async fn large_messages_in_flight_are_bounded_by_the_inbound_budget() {
    let budget = BUDGET.to_string();
    let mut env = vec![("ROOMCAST_INBOUND_BUDGET_BYTES", budget.as_str())];
    env.extend_from_slice(LONG_CLOCK);
    let server = attacked(&env);
    let rss = Rss::baseline(server.pid()).await;

    let text = chat_text(ANNOUNCED);
    let mut half = header(true, TEXT, ANNOUNCED);
    half.extend(masked(&text.as_bytes()[..SENT], 0));
    let mut clients = Vec::new();
    for room in 0..CONNECTIONS {
        let path = format!("/ws/chat/inbound-{}/", room % 20);
        let mut ws = RawWs::connect(server.addr(), Open::path(&path)).await;
        ws.send_raw(&half).await.unwrap();
        clients.push(ws);
    }
    let fates = join_all(clients.into_iter().map(fate)).await;
    let refused = fates.iter().filter(|(f, _)| *f == Fate::Refused).count();
    let held = CONNECTIONS - refused;
    let grown = rss.growth_kib().await;
    let peak = rss.peak_growth_kib();
    let bound = (BUDGET as u64 >> 10) + CONNECTIONS as u64 * PER_CONNECTION_KIB + SLACK_KIB;
    figure(
        "inbound budget",
        &format!(
            "{CONNECTIONS} connections x {SENT} B of a {ANNOUNCED} B message, budget {BUDGET} B: \
             {held} held, {refused} closed 1013; RSS growth {grown} KiB settled, {peak} KiB at \
             peak (bound {bound} KiB)"
        ),
    );
    let fits = BUDGET / (SENT - ALLOWANCE);
    assert!(
        held <= fits,
        "{held} messages held, but the budget fits {fits} of them"
    );
    assert!(held >= 1, "nobody could send a large message at all");
    assert!(
        peak <= bound,
        "RSS grew {peak} KiB at peak, over {bound} KiB"
    );
    assert_eq!(
        server
            .metric("roomcast_inbound_budget_refusals_total")
            .await,
        refused as u64
    );
    // The held ones are still connected, each in the middle of its message.
    server
        .wait_metric("roomcast_websockets_open", held as u64)
        .await;
}

#[tokio::test]
async fn long_or_fragmented_control_frames_are_refused_at_their_header() {
    // A long clock: a server that waited for the payload would say nothing for a minute.
    let server = attacked(LONG_CLOCK);
    let cases = [
        ("a ping of 126 bytes", header(true, PING, 126)),
        ("a close of 4000 bytes", header(true, CLOSE, 4000)),
        ("a ping without FIN", header(false, PING, 1)),
    ];
    for (what, bytes) in cases {
        let mut ws = RawWs::connect(server.addr(), Open::path("/ws/chat/control/")).await;
        // The header alone: its payload never comes.
        ws.send_raw(&bytes).await.unwrap();
        let sent = Instant::now();
        let close = ws.expect_close(Duration::from_secs(2)).await;
        assert_eq!(close.ok(), Some(Some(1002)), "{what}");
        assert!(sent.elapsed() < Duration::from_secs(1), "{what}");
    }
    wait::until(
        "the refused sockets to close",
        testkit::WAIT,
        async || match metrics::read(server.addr(), "roomcast_websockets_open").await {
            0 => Ok(()),
            n => Err(format!("{n} open")),
        },
    )
    .await;
}
