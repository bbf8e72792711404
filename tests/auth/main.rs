//! Who is talking: signed user tokens at the upgrade ([refusals], [grants]), the sender on
//! every frame and the token's transports ([senders]), key rotation ([rotation]), expiry and
//! refresh ([expiry]), bad configuration ([config]), the publish API on both brokers ([api],
//! [api_refusals], [api_redis]), tokens minted by PyJWT ([interop]) and logs that never show a token ([logs]).
//!
//! Tokens are minted here by [tokens], independently of the server's own code. Each scenario
//! is an `async fn` over any [`Endpoint`]: its test runs it on a server in this process, and
//! [logs] runs them all again on the binary with `ROOMCAST_LOG=debug`.

mod api;
mod api_redis;
mod api_refusals;
mod config;
mod expiry;
mod grants;
mod interop;
mod logs;
mod refusals;
mod rotation;
mod senders;
mod tokens;

use serde_json::Value;
use testkit::http::{self, Response};
use testkit::ws::{self, Ws};
use testkit::{Endpoint, InProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The signing secret of every server here (at least 32 bytes).
pub const SECRET: &str = "roomcast-test-signing-secret-0123456789";
/// The secret before a rotation, set as `ROOMCAST_AUTH_PREVIOUS_SECRET`.
pub const PREVIOUS_SECRET: &str = "roomcast-test-previous-secret-987654321";
/// The publish API's key.
pub const API_KEY: &str = "roomcast-test-api-key-abcdefghijklmnopqrstuv";

/// The server most scenarios run on: tokens required, a rotation under way, the API on.
/// Rates are lifted: one test address opens many connections and posts many messages.
pub fn required_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ROOMCAST_AUTH", "required"),
        ("ROOMCAST_AUTH_SECRET", SECRET),
        ("ROOMCAST_AUTH_PREVIOUS_SECRET", PREVIOUS_SECRET),
        ("ROOMCAST_API_KEY", API_KEY),
        ("ROOMCAST_UPGRADE_RATE", "10000"),
        ("ROOMCAST_UPGRADE_BURST", "10000"),
        ("ROOMCAST_RATE", "10000"),
        ("ROOMCAST_BURST", "10000"),
    ]
}

/// [`required_env`] with `ROOMCAST_AUTH` set to `mode`.
pub fn env_with_mode(mode: &'static str) -> Vec<(&'static str, &'static str)> {
    let mut env = required_env();
    env[0] = ("ROOMCAST_AUTH", mode);
    env
}

pub fn required_server() -> InProcess {
    InProcess::start(&required_env())
}

/// `Authorization: Bearer <token>`.
pub fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

/// The subprotocol that opts into the extended protocol, as an owned header.
pub fn extended() -> (&'static str, String) {
    (ws::EXTENDED.0, ws::EXTENDED.1.to_string())
}

fn borrowed<'a>(headers: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    headers
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect()
}

/// A chat client with these request headers; fails the test if the upgrade is refused.
pub async fn join(server: &impl Endpoint, path: &str, headers: &[(&str, String)]) -> Ws {
    ws::connect_with_headers(&server.ws_url(path), &borrowed(headers)).await
}

/// An extended client, past its welcome frame.
pub async fn join_extended(server: &impl Endpoint, path: &str, token: &str) -> Ws {
    let mut client = join(server, path, &[bearer(token), extended()]).await;
    welcome(&mut client).await;
    client
}

pub async fn welcome(client: &mut Ws) -> Value {
    let frame = ws::recv_json(client).await;
    assert_eq!(frame["type"], "welcome", "{frame}");
    frame
}

/// The GET that asks for a WebSocket at `path`, with `headers` after the required ones.
pub fn upgrade_request(path: &str, headers: &[(&str, String)]) -> String {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// An upgrade the server must refuse: its answer, checked to be `status` with `reason` as the
/// body, a Bearer challenge on a 401, and no trace of `token` anywhere in it.
pub async fn assert_refused(
    server: &impl Endpoint,
    what: &str,
    path: &str,
    headers: &[(&str, String)],
    token: &str,
    (status, reason): (u16, &str),
) -> Response {
    let response = http::exchange(server.addr(), upgrade_request(path, headers).as_bytes()).await;
    assert_eq!(response.status, status, "{what}: {response:?}");
    assert_eq!(response.text().trim_end(), reason, "{what}: {response:?}");
    if status == 401 {
        let challenge = response.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{what}: {response:?}");
    }
    assert_no_token(&response, token);
    response
}

/// Neither the head nor the body of `response` shows `token` or its signature.
pub fn assert_no_token(response: &Response, token: &str) {
    let text = format!("{}{}", response.head, response.text());
    for part in [token, tokens::signature_of(token)] {
        if part.len() >= 8 {
            assert!(!text.contains(part), "the answer shows the token: {text}");
        }
    }
}

/// A WebSocket opened by hand, so the 101's head can be read: the head and the client.
pub async fn raw_upgrade(
    server: &impl Endpoint,
    path: &str,
    headers: &[(&str, String)],
) -> (Response, Ws) {
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    let request = upgrade_request(path, headers);
    stream.write_all(request.as_bytes()).await.expect("write");
    // Byte by byte, so nothing after the head (the first frames) is taken from the socket.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(testkit::WAIT, stream.read_u8())
            .await
            .expect("a response head in time")
            .expect("a response head before the close");
        head.push(byte);
    }
    let response = Response::from_head(String::from_utf8(head).expect("UTF-8 head"))
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(response.status, 101, "{response:?}");
    let client =
        WebSocketStream::from_raw_socket(MaybeTlsStream::Plain(stream), Role::Client, None).await;
    (response, client)
}

/// The next chat frame, its sender checked: `user` as the server set it, or none at all.
/// Presence events (members arriving and leaving) are passed over.
pub async fn expect_chat(client: &mut Ws, message: &str, user: Option<&Value>) -> Value {
    let frame = ws::recv_unless_presence(client).await;
    assert!(frame.get("type").is_none(), "not a chat frame: {frame}");
    assert_eq!(frame["message"], message, "{frame}");
    assert!(frame["seq"].is_u64() && frame["ts"].is_u64(), "{frame}");
    assert_eq!(frame.get("user"), user, "the sender of {frame}");
    frame
}
