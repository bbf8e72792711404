//! Every error status of a plain request, each answered with a close, after which the server
//! still serves others.

use std::time::{Duration, Instant};

use testkit::http::Connection;
use testkit::{Endpoint, InProcess};

use super::{assert_error, assert_still_serving, exchange, get};

/// Below this the head timeout of 300 ms cannot have passed (timers never fire early).
const HEAD_TIMEOUT_FLOOR: Duration = Duration::from_millis(280);

#[tokio::test]
async fn malformed_request_line_is_400() {
    let server = InProcess::start(&[]);
    for request in [
        "this is not http\r\n\r\n",
        "GET /healthz HTTP/9.9\r\n\r\n",
        "GET\r\n\r\n",
    ] {
        let response = exchange(server.addr(), request).await;
        assert_error(&response, 400);
    }
    assert_still_serving(server.addr()).await;
}

#[tokio::test]
async fn post_is_405_with_allow() {
    let server = InProcess::start(&[]);
    let response = exchange(
        server.addr(),
        "POST /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_error(&response, 405);
    let allow = response.header("allow").expect("an Allow header");
    let methods: Vec<&str> = allow.split(',').map(str::trim).collect();
    assert!(
        methods.contains(&"GET") && methods.contains(&"HEAD"),
        "{allow}"
    );
    assert_still_serving(server.addr()).await;
}

#[tokio::test]
async fn a_head_over_8_kib_is_431() {
    let server = InProcess::start(&[]);
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(9000)
    );
    let response = exchange(server.addr(), &request).await;
    assert_error(&response, 431);
    // The same without the blank line: an endless head is cut off at the limit too.
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\nX-Padding: {}",
        "p".repeat(9000)
    );
    let response = exchange(server.addr(), &request).await;
    assert_error(&response, 431);
    assert_still_serving(server.addr()).await;
}

#[tokio::test]
async fn more_than_32_headers_is_431() {
    let server = InProcess::start(&[]);
    let headers = |count: usize| {
        (1..count)
            .map(|i| format!("X-Header-{i}: {i}\r\n"))
            .collect::<String>()
    };
    // 32 header lines (Host and 31 more) are fine...
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{}\r\n",
        headers(31)
    );
    let response = exchange(server.addr(), &request).await;
    assert_eq!(response.status, 200, "32 headers: {response:?}");
    // ...33 are not.
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{}\r\n",
        headers(32)
    );
    let response = exchange(server.addr(), &request).await;
    assert_error(&response, 431);
    assert_still_serving(server.addr()).await;
}

#[tokio::test]
async fn a_half_sent_head_gets_408_after_the_head_timeout() {
    let server = InProcess::start(&[("ROOMCAST_HEAD_TIMEOUT_MS", "300")]);
    let started = Instant::now();
    let mut client = Connection::open(server.addr()).await;
    client.send(b"GET /healthz HTTP/1.1\r\nHost: te").await;
    let response = client.closing_response().await;
    assert!(
        started.elapsed() >= HEAD_TIMEOUT_FLOOR,
        "answered before the head timeout"
    );
    assert_error(&response, 408);
    assert_still_serving(server.addr()).await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_silently_after_the_head_timeout() {
    let server = InProcess::start(&[("ROOMCAST_HEAD_TIMEOUT_MS", "300")]);
    // A connection that never sends a byte.
    let started = Instant::now();
    let mut client = Connection::open(server.addr()).await;
    client.expect_closed_silently().await;
    assert!(
        started.elapsed() >= HEAD_TIMEOUT_FLOOR,
        "closed before the head timeout"
    );
    // A kept-alive connection idle after one answered request.
    let mut client = Connection::open(server.addr()).await;
    client.send(get("/healthz").as_bytes()).await;
    assert_eq!(client.response(false).await.status, 200);
    client.expect_closed_silently().await;
    assert_still_serving(server.addr()).await;
}

#[tokio::test]
async fn a_get_with_a_body_is_400() {
    let server = InProcess::start(&[]);
    let response = exchange(
        server.addr(),
        "GET /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_error(&response, 400);
    let response = exchange(
        server.addr(),
        "GET /healthz HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_error(&response, 400);
    assert_still_serving(server.addr()).await;
}
