//! The publish API on the embedded broker: `POST /api/rooms/<room>/messages` answers 200 with
//! the seq and epoch and members get the message with the `user` the backend named; each
//! refusal has its status and a JSON `{"error"}`; an `Idempotency-Key` publishes once.

use serde_json::{Value, json};
use testkit::http::{self, Connection, Response};
use testkit::ws::{Ws, send_chat};
use testkit::{Endpoint, InProcess};

use super::tokens::user;
use super::{API_KEY, expect_chat, join_extended, required_env, required_server};

/// `POST path` with `headers` (nothing else but `Host` and `Connection: close`) and `body`.
pub fn post_request(path: &str, headers: &[(&str, String)], body: &str) -> String {
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    request
}

/// What a backend sends: the key, JSON, the length.
pub fn api_headers(body: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Authorization", format!("Bearer {API_KEY}")),
        ("Content-Type", "application/json".into()),
        ("Content-Length", body.len().to_string()),
    ]
}

pub fn messages_path(room: &str) -> String {
    format!("/api/rooms/{room}/messages")
}

/// A well-formed post of `body` to `room`, with `extra` headers.
pub async fn post(
    server: &impl Endpoint,
    room: &str,
    body: &Value,
    extra: &[(&str, String)],
) -> Response {
    let body = body.to_string();
    let mut headers = api_headers(&body);
    headers.extend(extra.iter().cloned());
    let request = post_request(&messages_path(room), &headers, &body);
    http::exchange(server.addr(), request.as_bytes()).await
}

/// A 200 with `{"seq", "epoch"}`: the seq.
pub fn accepted(response: &Response) -> (u64, String) {
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("content-type"), Some("application/json"));
    let answer: Value = serde_json::from_slice(&response.body).expect("a JSON answer");
    let seq = answer["seq"].as_u64().unwrap_or_else(|| panic!("{answer}"));
    let epoch = answer["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    (seq, epoch.to_string())
}

/// A refusal: `status`, a JSON `{"error": "<text>"}`, and the connection closed and said so.
pub fn assert_api_error(response: &Response, status: u16, what: &str) {
    let shown = format!("{}{}", response.head, response.text());
    assert_eq!(response.status, status, "{what}: {shown}");
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{what}: every API answer is JSON: {shown}"
    );
    let answer: Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|_| panic!("{what}: not JSON: {shown}"));
    assert!(answer["error"].is_string(), "{what}: {answer}");
    assert!(!shown.contains(API_KEY), "{what}: {shown}");
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "{what}: the server closes after a refusal, and should say so: {shown}"
    );
}

/// A member of `room` that reads everything (an extended client, past its welcome).
pub async fn member(server: &impl Endpoint, room: &str) -> (Ws, Value) {
    let token = user("reader", json!({}));
    let mut client = super::join(
        server,
        &format!("/ws/chat/{room}/"),
        &[super::bearer(&token), super::extended()],
    )
    .await;
    let welcome = super::welcome(&mut client).await;
    (client, welcome)
}

/// A post reaches the room's members with the backend's `user`, or none.
pub async fn a_post_reaches_the_room(server: &impl Endpoint) {
    let (mut member, welcome) = member(server, "api-lobby").await;
    let bot = json!({ "id": "bot", "name": "Deploy bot" });
    let response = post(
        server,
        "api-lobby",
        &json!({ "message": "deployed", "user": bot }),
        &[],
    )
    .await;
    let (seq, epoch) = accepted(&response);
    assert_eq!(epoch, welcome["epoch"], "{response:?}");
    let frame = expect_chat(&mut member, "deployed", Some(&bot)).await;
    assert_eq!(frame["seq"], seq);

    let response = post(server, "api-lobby", &json!({ "message": "anonymous" }), &[]).await;
    let (seq, _) = accepted(&response);
    assert_eq!(
        expect_chat(&mut member, "anonymous", None).await["seq"],
        seq
    );

    // A client in the room and the API share one order.
    let writer = user("w", json!({}));
    let mut writer = join_extended(server, "/ws/chat/api-lobby/", &writer).await;
    send_chat(&mut writer, "from a socket").await;
    let id_only = json!({ "message": "id only", "user": { "id": "svc" } });
    let (api_seq, _) = accepted(&post(server, "api-lobby", &id_only, &[]).await);
    let socket = expect_chat(&mut member, "from a socket", Some(&json!({ "id": "w" }))).await;
    let api = expect_chat(&mut member, "id only", Some(&json!({ "id": "svc" }))).await;
    assert_eq!(
        (socket["seq"].as_u64(), api["seq"].as_u64()),
        (Some(seq + 1), Some(api_seq))
    );
}

/// Keep-alive: a backend may post again on the same connection after a 200.
pub async fn posts_share_a_kept_alive_connection(server: &impl Endpoint) {
    let (mut member, _) = member(server, "kept").await;
    let mut connection = Connection::open(server.addr()).await;
    for message in ["one", "two"] {
        let body = json!({ "message": message }).to_string();
        let mut request = format!("POST {} HTTP/1.1\r\nHost: test\r\n", messages_path("kept"));
        for (name, value) in api_headers(&body) {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!("\r\n{body}"));
        connection.send(request.as_bytes()).await;
        accepted(&connection.response(false).await);
        expect_chat(&mut member, message, None).await;
    }
}

/// The same `Idempotency-Key` twice publishes once and answers the same seq.
pub async fn a_retried_post_publishes_once(server: &impl Endpoint, room: &str) {
    let (mut member, _) = member(server, room).await;
    let key = ("Idempotency-Key", "order-17/ship".to_string());
    let body = json!({ "message": "order 17 shipped", "user": { "id": "shop" } });
    let first = accepted(&post(server, room, &body, std::slice::from_ref(&key)).await);
    let again = accepted(&post(server, room, &body, &[key]).await);
    assert_eq!(first, again, "a retry answers the first seq");
    let longest = ("Idempotency-Key", "k".repeat(128));
    let other = accepted(&post(server, room, &json!({ "message": "next" }), &[longest]).await);
    assert_eq!(other.0, first.0 + 1, "a new key is a new message");
    let plain = json!({ "message": "no key" });
    let without = [
        accepted(&post(server, room, &plain, &[]).await),
        accepted(&post(server, room, &plain, &[]).await),
    ];
    assert_eq!(
        without[1].0,
        without[0].0 + 1,
        "without a key every post publishes"
    );

    let shop = json!({ "id": "shop" });
    assert_eq!(
        expect_chat(&mut member, "order 17 shipped", Some(&shop)).await["seq"],
        first.0
    );
    assert_eq!(
        expect_chat(&mut member, "next", None).await["seq"],
        other.0,
        "published once"
    );
    for (seq, _) in without {
        assert_eq!(expect_chat(&mut member, "no key", None).await["seq"], seq);
    }
}

/// A room nobody is in keeps nothing: the post gets a seq and reaches no later member.
pub async fn a_post_to_an_empty_room_is_numbered_and_kept_nowhere(server: &impl Endpoint) {
    let (seq, _) = accepted(
        &post(
            server,
            "nobody",
            &json!({ "message": "into the void" }),
            &[],
        )
        .await,
    );
    assert!(seq >= 1);
    let (mut member, welcome) = member(server, "nobody").await;
    assert_eq!(welcome["seq"], 0, "nothing kept: {welcome}");
    accepted(&post(server, "nobody", &json!({ "message": "now" }), &[]).await);
    expect_chat(&mut member, "now", None).await;
}

#[tokio::test]
async fn a_post_reaches_members_with_the_user_the_backend_named() {
    let server = required_server();
    a_post_reaches_the_room(&server).await;
    posts_share_a_kept_alive_connection(&server).await;
}

#[tokio::test]
async fn the_same_idempotency_key_publishes_once_with_one_seq() {
    a_retried_post_publishes_once(&required_server(), "orders").await;
}

#[tokio::test]
async fn a_post_to_a_room_nobody_is_in_gets_a_seq_and_reaches_no_one() {
    a_post_to_an_empty_room_is_numbered_and_kept_nowhere(&required_server()).await;
}

#[tokio::test]
async fn the_api_is_404_when_no_key_is_configured() {
    let env: Vec<_> = required_env()
        .into_iter()
        .filter(|(name, _)| *name != "ROOMCAST_API_KEY")
        .collect();
    let server = InProcess::start(&env);
    let response = post(&server, "lobby", &json!({ "message": "x" }), &[]).await;
    assert_api_error(&response, 404, "API off");
}
