//! Both brokers build a chat frame from the same parts, so what a client receives does not
//! depend on the broker: the same bytes live and in a replay, whatever the message holds.

use testkit::redis::RedisServer;
use testkit::ws::{Ws, connect, next_message, send_chat};
use testkit::{Endpoint, InProcess, http};
use tokio_tungstenite::tungstenite::Message;

use super::{instance, welcome};

const KEY: &str = "frames-test-api-key-0123456789abcdef";
/// Quotes, escapes, markup, non-ASCII and a control character: everything JSON must escape.
const TRICKY: &str = "h\u{e9}llo \"q\" \\ </script> \u{1}\t\u{1F600}";

/// The next frame as the server wrote it, with the publish time (which differs between the
/// two servers) zeroed.
async fn raw_frame(ws: &mut Ws) -> String {
    let text = match next_message(ws).await {
        Some(Ok(Message::Text(text))) => text.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    };
    let start = text.find("\"ts\":").expect("a chat frame has ts") + 5;
    let end = start + text[start..].find(|c: char| !c.is_ascii_digit()).unwrap();
    format!("{}0{}", &text[..start], &text[end..])
}

/// A message from a member, then one from the API with a sender, as each broker frames them
/// live and in a replay.
async fn frames_from(server: &impl Endpoint) -> Vec<String> {
    let mut member = connect(&server.ws_url("/ws/chat/frames/"), true).await;
    welcome(&mut member).await;
    send_chat(&mut member, TRICKY).await;
    let body = serde_json::json!({"message": TRICKY, "user": {"id": "b\u{f6}t", "name": "Z\u{f6}e \"Q\""}})
        .to_string();
    let post = format!(
        "POST /api/rooms/frames/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut frames = vec![raw_frame(&mut member).await];
    let answer = http::exchange(server.addr(), post.as_bytes()).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    frames.push(raw_frame(&mut member).await);

    let mut late = connect(&server.ws_url("/ws/chat/frames/?recent=2"), true).await;
    welcome(&mut late).await;
    frames.push(raw_frame(&mut late).await);
    frames.push(raw_frame(&mut late).await);
    frames
}

#[tokio::test]
async fn frames_are_byte_identical_from_either_broker_live_and_replayed() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let env = [("ROOMCAST_API_KEY", KEY)];
    let embedded = frames_from(&InProcess::start(&env)).await;
    let shared = frames_from(&instance(&redis, &env).await).await;

    assert_eq!(embedded, shared);
    assert_eq!(
        embedded[..2],
        embedded[2..],
        "a replay repeats the live frames"
    );
    assert!(embedded[0].starts_with("{\"message\":"), "{}", embedded[0]);
    assert!(
        embedded[1].contains("\"user\":{\"id\":\"b\u{f6}t\""),
        "{}",
        embedded[1]
    );
}
