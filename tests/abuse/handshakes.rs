//! Strict handshakes: exactly one non-empty `Host`, a `Sec-WebSocket-Key` of 16 bytes in
//! base64, GET over HTTP/1.1, version 13; and origins: a browser's `Origin` must name the
//! `Host` (default ports aside) or be listed, while a client with no `Origin` is let in.

use std::net::SocketAddr;

use testkit::http::{Connection, Response, exchange};
use testkit::{Endpoint, InProcess};

use super::{WS_KEY, good_upgrade, shared_machine, upgrade_request};

/// The status `request` gets, on a connection the server closes unless it upgrades.
async fn status_of(addr: SocketAddr, request: &str) -> u16 {
    let mut client = Connection::open(addr).await;
    client.send(request.as_bytes()).await;
    let head = client.head().await;
    if head.status != 101 {
        assert_eq!(head.header("connection"), Some("close"), "{head:?}");
    }
    head.status
}

async fn refused(addr: SocketAddr, request: &str) -> Response {
    let response = exchange(addr, request.as_bytes()).await;
    assert_ne!(response.status, 101, "{request:?}");
    response
}

#[tokio::test]
async fn upgrades_without_one_host_or_a_sixteen_byte_key_are_400() {
    let _machine = shared_machine().await;
    let server = InProcess::start(&[]);
    let key = format!("Sec-WebSocket-Key: {WS_KEY}\r\n");
    let path = "/ws/chat/strict/";
    let cases = [
        ("no Host", key.clone()),
        ("an empty Host", format!("Host: \r\n{key}")),
        ("two Hosts", format!("Host: test\r\nHost: other\r\n{key}")),
        (
            "two equal Hosts",
            format!("Host: test\r\n{key}Host: test\r\n"),
        ),
        ("no key", "Host: test\r\n".to_string()),
        (
            "a short key",
            "Host: test\r\nSec-WebSocket-Key: c2hvcnQ=\r\n".into(),
        ),
        (
            "a key that is not base64",
            "Host: test\r\nSec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==\r\n".into(),
        ),
        (
            "24 base64 characters of 18 bytes",
            "Host: test\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAA\r\n".into(),
        ),
        (
            "a key of 16 bytes without padding",
            "Host: test\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n".into(),
        ),
    ];
    for (what, headers) in cases {
        let response = refused(server.addr(), &upgrade_request(path, &headers)).await;
        assert_eq!(response.status, 400, "{what}: {response:?}");
    }
    assert_eq!(status_of(server.addr(), &good_upgrade(path, "")).await, 101);
}

#[tokio::test]
async fn upgrades_over_http_1_0_with_head_or_another_version_are_refused() {
    let _machine = shared_machine().await;
    let server = InProcess::start(&[]);
    let good = good_upgrade("/ws/chat/strict/", "");
    let http10 = good.replacen("HTTP/1.1", "HTTP/1.0", 1);
    assert_eq!(refused(server.addr(), &http10).await.status, 400);
    let head = good.replacen("GET", "HEAD", 1);
    assert_eq!(refused(server.addr(), &head).await.status, 400);
    let post = good.replacen("GET", "POST", 1);
    assert_eq!(refused(server.addr(), &post).await.status, 405);
    let version_8 = good.replace("Version: 13", "Version: 8");
    let response = refused(server.addr(), &version_8).await;
    assert_eq!(response.status, 426);
    assert_eq!(response.header("sec-websocket-version"), Some("13"));
}

/// An upgrade with `Host: host` and, when given, `Origin: origin`.
fn from_origin(host: &str, origin: Option<&str>) -> String {
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    upgrade_request(
        "/ws/chat/origins/",
        &format!("Host: {host}\r\nSec-WebSocket-Key: {WS_KEY}\r\n{origin}"),
    )
}

#[tokio::test]
async fn the_same_origin_is_let_in_default_ports_aside_and_others_get_403() {
    let _machine = shared_machine().await;
    let server = InProcess::start(&[]);
    let addr = server.addr();
    for (host, origin) in [
        ("chat.example", None),
        ("chat.example", Some("http://chat.example")),
        ("chat.example", Some("https://chat.example")),
        ("chat.example", Some("http://chat.example:80")),
        ("chat.example", Some("https://chat.example:443")),
        ("chat.example:80", Some("http://chat.example")),
        ("chat.example:8000", Some("http://chat.example:8000")),
        ("CHAT.example", Some("HTTPS://chat.EXAMPLE")),
    ] {
        let status = status_of(addr, &from_origin(host, origin)).await;
        assert_eq!(status, 101, "Host {host}, Origin {origin:?}");
    }
    for (host, origin) in [
        ("chat.example", "https://evil.example"),
        ("chat.example", "http://chat.example:8080"),
        ("chat.example:8000", "http://chat.example"),
        ("chat.example", "http://chat.example.evil.example"),
        ("chat.example", "http://evil.example/chat.example"),
        ("chat.example", "null"),
        ("chat.example", "chat.example"),
        ("chat.example", "ftp://chat.example"),
        ("chat.example", ""),
    ] {
        let response = refused(addr, &from_origin(host, Some(origin))).await;
        assert_eq!(response.status, 403, "Host {host}, Origin {origin:?}");
    }
}

#[tokio::test]
async fn listed_origins_are_added_and_a_star_allows_any() {
    let _machine = shared_machine().await;
    let listed = InProcess::start(&[(
        "ROOMCAST_ALLOWED_ORIGINS",
        "https://app.example, http://localhost:3000",
    )]);
    for origin in [
        "https://app.example",
        "http://localhost:3000",
        "http://chat.example",
    ] {
        let request = from_origin("chat.example", Some(origin));
        assert_eq!(status_of(listed.addr(), &request).await, 101, "{origin}");
    }
    for origin in ["https://app.example:8443", "http://localhost:3001"] {
        let request = from_origin("chat.example", Some(origin));
        assert_eq!(
            refused(listed.addr(), &request).await.status,
            403,
            "{origin}"
        );
    }
    let any = InProcess::start(&[("ROOMCAST_ALLOWED_ORIGINS", "*")]);
    let request = from_origin("chat.example", Some("https://evil.example"));
    assert_eq!(status_of(any.addr(), &request).await, 101);
}
