//! The peer clock against raw clients: a silent peer is dropped between the peer timeout and
//! a second later, and a message left half sent is cut even while pongs keep coming.

use std::time::Duration;

use testkit::raw_ws::{CLOSE, Event, Open, PING, PONG, RawWs, TEXT};
use testkit::{Endpoint, WAIT};
use tokio::time::Instant;

use super::{LATE, PEER_TIMEOUT, SHORT_CLOCK, attacked, figure};

#[tokio::test]
async fn a_silent_peer_is_dropped_between_the_timeout_and_a_second_later() {
    let server = attacked(SHORT_CLOCK);
    let mut peer = RawWs::connect(server.addr(), Open::path("/ws/chat/quiet/")).await;
    // Timed from before the write: the server cannot have heard it any earlier.
    let last_frame = Instant::now();
    peer.send(true, TEXT, br#"{"message":"last words"}"#)
        .await
        .unwrap();
    // From here it reads what comes and answers nothing, pings included.
    let mut pings = 0;
    let mut closed_at = None;
    let ended_at = loop {
        match peer.next_event(WAIT).await {
            Event::Frame(frame) if frame.opcode == PING => pings += 1,
            Event::Frame(frame) if frame.opcode == CLOSE => closed_at = Some(last_frame.elapsed()),
            Event::Frame(_) => {}
            Event::Closed | Event::Broken(_) => break last_frame.elapsed(),
            Event::Quiet => panic!("a silent peer still connected after {WAIT:?}"),
        }
    };
    let closed_at = closed_at.expect("a close frame before the end");
    figure(
        "silent peer",
        &format!("close frame {closed_at:?} and end {ended_at:?} after its last frame"),
    );
    assert!(pings >= 1, "the heartbeat pinged the quiet peer first");
    for (what, at) in [("close frame", closed_at), ("end of stream", ended_at)] {
        assert!(
            at >= PEER_TIMEOUT && at <= PEER_TIMEOUT + LATE,
            "{what} {at:?} after the last frame; expected {PEER_TIMEOUT:?} to {:?}",
            PEER_TIMEOUT + LATE
        );
    }
    server.wait_metric("roomcast_websockets_open", 0).await;
}

#[tokio::test]
async fn a_half_sent_message_kept_alive_by_pongs_is_cut_with_1008() {
    let server = attacked(SHORT_CLOCK);
    let mut peer = RawWs::connect(server.addr(), Open::path("/ws/chat/fragments/")).await;
    // The first fragment of a text message, and never the rest.
    let fragment_sent = Instant::now();
    peer.send(false, TEXT, br#"{"message":"to be contin"#)
        .await
        .unwrap();
    let mut pongs = 0;
    let code = loop {
        match peer.next_event(Duration::from_millis(400)).await {
            Event::Frame(frame) if frame.opcode == CLOSE => break frame.close_code(),
            Event::Frame(frame) if frame.opcode == PING => {
                peer.send(true, PONG, &frame.payload).await.unwrap();
                pongs += 1;
            }
            Event::Frame(frame) => panic!("unexpected {frame:?}"),
            // Unsolicited pongs: the peer is anything but silent.
            Event::Quiet => {
                peer.send(true, PONG, b"still here").await.unwrap();
                pongs += 1;
            }
            other => panic!(
                "cut without a close frame after {:?}: {other:?}",
                fragment_sent.elapsed()
            ),
        }
        assert!(
            fragment_sent.elapsed() < WAIT,
            "a half-sent message still held after {WAIT:?}"
        );
    };
    let cut_after = fragment_sent.elapsed();
    figure(
        "half-sent message",
        &format!("close {code:?} {cut_after:?} after the fragment, {pongs} pongs sent meanwhile"),
    );
    assert_eq!(code, Some(1008), "the close code");
    assert!(pongs >= 5, "only {pongs} pongs were sent");
    assert!(
        cut_after >= PEER_TIMEOUT && cut_after <= PEER_TIMEOUT + LATE,
        "cut {cut_after:?} after the fragment; expected {PEER_TIMEOUT:?} to {:?}",
        PEER_TIMEOUT + LATE
    );
    server.wait_metric("roomcast_websockets_open", 0).await;
}
