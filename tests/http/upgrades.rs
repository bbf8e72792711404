//! The WebSocket upgrade's checks: what is refused (426, 400, 403, 404) and what is accepted.

use std::net::SocketAddr;

use testkit::http::{Connection, Response};
use testkit::{Endpoint, InProcess};

use super::{assert_error, assert_still_serving, exchange, get};

/// The RFC 6455 sample key and its accept value.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn upgrade_request(path: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n{extra_headers}\r\n"
    )
}

/// An upgrade that must be refused: the error response, after which the server closes.
async fn refused_upgrade(addr: SocketAddr, path: &str, extra_headers: &str) -> Response {
    exchange(addr, &upgrade_request(path, extra_headers)).await
}

/// An upgrade that must succeed: a 101 with the right accept key.
async fn accepted_upgrade(addr: SocketAddr, path: &str, extra_headers: &str) {
    let mut client = Connection::open(addr).await;
    client
        .send(upgrade_request(path, extra_headers).as_bytes())
        .await;
    let response = client.head().await;
    assert_eq!(response.status, 101, "{path}: {response:?}");
    assert_eq!(
        response.header("sec-websocket-accept"),
        Some(WS_ACCEPT),
        "{response:?}"
    );
    assert!(
        response
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{response:?}"
    );
}

#[tokio::test]
async fn a_websocket_path_without_upgrade_headers_is_426() {
    let server = InProcess::start(&[]);
    let response = exchange(server.addr(), &get("/ws/chat/lobby/")).await;
    assert_error(&response, 426);
    assert_eq!(response.header("sec-websocket-version"), Some("13"));
    assert_still_serving(server.addr()).await;
}

#[tokio::test]
async fn an_upgrade_with_a_bad_since_is_400() {
    let server = InProcess::start(&[]);
    let response = refused_upgrade(server.addr(), "/ws/chat/lobby/?since=abc", "").await;
    assert_error(&response, 400);
    let response = refused_upgrade(server.addr(), "/ws/chat/lobby/?since=-1", "").await;
    assert_error(&response, 400);
    // A whole number is fine.
    accepted_upgrade(server.addr(), "/ws/chat/lobby/?since=3", "").await;
    assert_still_serving(server.addr()).await;
}

#[tokio::test]
async fn an_upgrade_with_version_8_is_426() {
    let server = InProcess::start(&[]);
    let request = format!(
        "GET /ws/chat/lobby/ HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n"
    );
    let response = exchange(server.addr(), &request).await;
    assert_error(&response, 426);
    assert_eq!(response.header("sec-websocket-version"), Some("13"));
    assert_still_serving(server.addr()).await;
}

#[tokio::test]
async fn allowed_origins_are_added_to_the_servers_own() {
    let server = InProcess::start(&[("ROOMCAST_ALLOWED_ORIGINS", "https://ok.example")]);
    let response = refused_upgrade(
        server.addr(),
        "/ws/chat/lobby/",
        "Origin: https://evil.example\r\n",
    )
    .await;
    assert_error(&response, 403);
    for origin in [
        "Origin: https://ok.example\r\n",
        "Origin: http://test\r\n",
        "",
    ] {
        accepted_upgrade(server.addr(), "/ws/chat/lobby/", origin).await;
    }
    assert_still_serving(server.addr()).await;
}

#[tokio::test]
async fn only_the_same_origin_by_default_and_any_with_a_star() {
    let server = InProcess::start(&[]);
    let foreign = "Origin: https://evil.example\r\n";
    let refused = refused_upgrade(server.addr(), "/ws/chat/lobby/", foreign).await;
    assert_error(&refused, 403);
    // The page's own origin, and a client that is not a browser (no Origin at all).
    accepted_upgrade(server.addr(), "/ws/chat/lobby/", "Origin: http://test\r\n").await;
    accepted_upgrade(server.addr(), "/ws/chat/lobby", "").await;
    let open = InProcess::start(&[("ROOMCAST_ALLOWED_ORIGINS", "*")]);
    accepted_upgrade(open.addr(), "/ws/chat/lobby/", foreign).await;
}

#[tokio::test]
async fn an_upgrade_to_a_101_character_room_is_404() {
    let server = InProcess::start(&[]);
    let response =
        refused_upgrade(server.addr(), &format!("/ws/chat/{}/", "r".repeat(101)), "").await;
    assert_error(&response, 404);
    // 100 characters is the longest valid name.
    accepted_upgrade(server.addr(), &format!("/ws/chat/{}/", "r".repeat(100)), "").await;
    assert_still_serving(server.addr()).await;
}

#[tokio::test]
async fn the_echo_endpoint_is_404_unless_enabled() {
    let server = InProcess::start(&[]);
    let response = refused_upgrade(server.addr(), "/ws/echo", "").await;
    assert_error(&response, 404);
    assert_still_serving(server.addr()).await;
    drop(server);

    let server = InProcess::start(&[("ROOMCAST_ECHO", "1")]);
    accepted_upgrade(server.addr(), "/ws/echo", "").await;
}
