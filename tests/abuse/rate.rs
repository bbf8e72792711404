//! The publish rate per connection (defaults: 5 a second, bursts of 20): an extended client
//! is told when to retry and its message is dropped; a plain one is closed 1008 at once; an
//! extended one that keeps going past BURST refusals in a row is closed 1008 too. Pings
//! count like messages. What was published is checked through a second member, since a
//! sender's own copies travel apart from its error frames and may be cut short by its close.

use futures_util::SinkExt;
use serde_json::Value;
use testkit::ws::{
    Ws, chat, connect, expect_close, next_message, recv_json, recv_unless_presence, send_chat,
};
use testkit::{Endpoint, InProcess};
use tokio_tungstenite::tungstenite::Message;

use super::shared_machine;

const BURST: usize = 20;

/// Queues `count` chat messages and sends them in one flush, so they arrive well inside one
/// interval of the rate (200 ms) and no allowance comes back meanwhile.
async fn send_at_once(ws: &mut Ws, first: usize, count: usize) {
    for n in first..first + count {
        let frame = serde_json::json!({ "message": format!("m{n}") }).to_string();
        ws.feed(Message::text(frame)).await.unwrap();
    }
    ws.flush().await.unwrap();
}

async fn welcome(ws: &mut Ws) {
    let frame = recv_json(ws).await;
    assert_eq!(frame["type"], "welcome", "{frame}");
}

/// Checks a `rate_limited` error frame; its `retry_after_ms`.
fn assert_rate_limited(frame: &Value) -> u64 {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], "rate_limited", "{frame}");
    assert!(frame["detail"].is_string(), "{frame}");
    assert!(frame.get("message").is_none(), "{frame}");
    frame["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retry_after_ms in {frame}"))
}

/// What a sender got until its close (or, with `until_refusals`, until that many refusals
/// and `copies` of its own messages): its copies' seqs, the refusals' `retry_after_ms`, and
/// the close code if it came.
struct Answers {
    copies: Vec<u64>,
    refusals: Vec<u64>,
    close: Option<(u16, String)>,
}

async fn answers(ws: &mut Ws, copies: usize, until_refusals: Option<usize>) -> Answers {
    let mut answers = Answers {
        copies: Vec::new(),
        refusals: Vec::new(),
        close: None,
    };
    while until_refusals
        .is_none_or(|wanted| answers.refusals.len() < wanted || answers.copies.len() < copies)
    {
        match next_message(ws).await {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                // Who joins the room is told as it happens; not what this is about.
                if matches!(frame["type"].as_str(), Some("join" | "leave" | "members")) {
                    continue;
                }
                if frame.get("type").is_some() {
                    answers.refusals.push(assert_rate_limited(&frame));
                } else {
                    answers.copies.push(chat(&frame).1);
                }
            }
            Some(Ok(Message::Close(Some(close)))) => {
                answers.close = Some((close.code.into(), close.reason.to_string()));
                break;
            }
            other => panic!("expected frames or a close, got {other:?}"),
        }
    }
    let in_order = answers.copies.windows(2).all(|pair| pair[0] < pair[1]);
    assert!(in_order, "{:?}", answers.copies);
    answers
}

/// The bystander saw seqs 1..=`published` and nothing of what was refused: its own next
/// message is `published + 1`.
async fn assert_published_then(bystander: &mut Ws, published: u64) {
    for seq in 1..=published {
        assert_eq!(chat(&recv_json(bystander).await).1, seq);
    }
    send_chat(bystander, "still here").await;
    assert_eq!(
        chat(&recv_json(bystander).await),
        ("still here".to_string(), published + 1)
    );
}

#[tokio::test]
async fn an_extended_client_over_the_rate_is_told_when_to_retry_and_not_published() {
    let _machine = shared_machine().await;
    let server = InProcess::start(&[]);
    let url = server.ws_url("/ws/chat/rate-extended/");
    let mut sender = connect(&url, true).await;
    let mut reader = connect(&url, false).await;
    welcome(&mut sender).await;
    server.wait_metric("roomcast_websockets_open", 2).await;

    send_at_once(&mut sender, 1, BURST + 1).await;
    let answers = answers(&mut sender, BURST, Some(1)).await;
    assert_eq!(answers.copies, (1..=BURST as u64).collect::<Vec<_>>());
    // One message every 200 ms: the next one is allowed within an interval.
    let retry_after_ms = answers.refusals[0];
    assert!(
        (1..=200).contains(&retry_after_ms),
        "retry_after_ms {retry_after_ms}"
    );
    assert_eq!(server.metric("roomcast_rate_limited_total").await, 1);

    tokio::time::sleep(std::time::Duration::from_millis(retry_after_ms + 20)).await;
    send_at_once(&mut sender, 100, 1).await;
    // The refused message took no seq, and the sender is still connected.
    assert_eq!(
        chat(&recv_unless_presence(&mut sender).await),
        ("m100".to_string(), BURST as u64 + 1)
    );
    for seq in 1..=BURST as u64 + 1 {
        assert_eq!(chat(&recv_json(&mut reader).await).1, seq);
    }
}

#[tokio::test]
async fn a_plain_client_over_the_rate_is_closed_1008_at_once() {
    let _machine = shared_machine().await;
    let server = InProcess::start(&[]);
    let url = server.ws_url("/ws/chat/rate-plain/");
    let mut sender = connect(&url, false).await;
    let mut bystander = connect(&url, false).await;
    server.wait_metric("roomcast_websockets_open", 2).await;

    send_at_once(&mut sender, 1, BURST + 5).await;
    let answers = answers(&mut sender, BURST, None).await;
    assert!(
        answers.refusals.is_empty(),
        "plain clients get no error frames"
    );
    let (code, reason) = answers.close.expect("a close");
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("rate"), "{reason}");
    assert_eq!(server.metric("roomcast_rate_limited_total").await, 1);
    assert_published_then(&mut bystander, BURST as u64).await;
}

#[tokio::test]
async fn an_extended_flooder_is_closed_1008_after_burst_refusals_in_a_row() {
    let _machine = shared_machine().await;
    let server = InProcess::start(&[]);
    let url = server.ws_url("/ws/chat/rate-flood/");
    let mut flooder = connect(&url, true).await;
    let mut bystander = connect(&url, false).await;
    welcome(&mut flooder).await;
    server.wait_metric("roomcast_websockets_open", 2).await;

    send_at_once(&mut flooder, 1, 3 * BURST).await;
    let answers = answers(&mut flooder, BURST, None).await;
    assert_eq!(answers.close.map(|close| close.0), Some(1008));
    assert_eq!(
        answers.refusals.len(),
        BURST,
        "BURST refusals are answered, the next one closes"
    );
    assert_eq!(
        server.metric("roomcast_rate_limited_total").await,
        BURST as u64 + 1
    );
    // The burst was published, nothing after it, and the room carries on.
    assert_published_then(&mut bystander, BURST as u64).await;
}

#[tokio::test]
async fn pings_count_against_the_rate() {
    let _machine = shared_machine().await;
    let server = InProcess::start(&[]);
    let mut ws = connect(&server.ws_url("/ws/chat/rate-pings/"), false).await;
    for _ in 0..BURST + 5 {
        ws.feed(Message::Ping(Default::default())).await.unwrap();
    }
    ws.flush().await.unwrap();
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 1008, "{reason}");
    assert_eq!(server.metric("roomcast_rate_limited_total").await, 1);
}
