//! The connection cap: past it a 503 with Retry-After, and service again when a slot frees.

use std::net::SocketAddr;

use testkit::http::{Connection, Response};
use testkit::{Endpoint, InProcess, WAIT, metrics, wait};

use super::{assert_error, exchange, get, get_and_close};

/// A fresh `GET path` answered with anything but the 503 of the connection cap, polled for
/// at most `WAIT`.
async fn get_when_admitted(addr: SocketAddr, path: &str) -> Response {
    wait::until(
        &format!("GET {path} under the cap"),
        WAIT,
        async || match exchange(addr, &get_and_close(path)).await {
            response if response.status == 503 => Err(format!("{response:?}")),
            response => Ok(response),
        },
    )
    .await
}

#[tokio::test]
async fn the_connection_cap_answers_503_and_recovers() {
    let server = InProcess::start(&[
        ("ROOMCAST_MAX_CONNECTIONS", "2"),
        ("ROOMCAST_HEAD_TIMEOUT_MS", "60000"),
    ]);
    // Two kept-alive connections, each answered once, so each surely holds a slot.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = Connection::open(server.addr()).await;
        client.send(get("/healthz").as_bytes()).await;
        assert_eq!(client.response(false).await.status, 200);
        held.push(client);
    }

    let mut third = Connection::open(server.addr()).await;
    third.send(get("/").as_bytes()).await;
    let response = third.closing_response().await;
    assert_error(&response, 503);
    assert_eq!(response.header("retry-after"), Some("1"), "{response:?}");

    // Health checks are answered past the cap: the orchestrator must see the truth.
    for path in ["/readyz", "/healthz"] {
        let mut probe = Connection::open(server.addr()).await;
        probe.send(get(path).as_bytes()).await;
        let status = probe.closing_response().await.status;
        assert_eq!(status, 200, "{path} at the cap");
    }

    // One slot frees up when a held connection closes.
    drop(held.remove(0));
    let response = get_when_admitted(server.addr(), "/").await;
    assert_eq!(response.status, 200, "{response:?}");

    let page = get_when_admitted(server.addr(), "/metrics").await;
    let rejected = metrics::sample(&page.text(), "roomcast_connections_rejected_total")
        .expect("roomcast_connections_rejected_total");
    assert!(rejected >= 1, "{}", page.text());

    // The connection still held was not disturbed.
    let mut kept = held.remove(0);
    kept.send(get("/readyz").as_bytes()).await;
    assert_eq!(kept.response(false).await.status, 200);
}
