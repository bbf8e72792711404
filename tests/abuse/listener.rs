//! `ROOMCAST_METRICS_ADDR`: a listener of its own for `/metrics`, `/healthz` and `/readyz`
//! (everything else 404 there), named in the `listening` line; the public port then answers
//! `/metrics` with 404 and keeps everything else.

use std::net::SocketAddr;

use serde_json::Value;
use testkit::http::{exchange, get};
use testkit::{Endpoint, Roomcast, Server, metrics};

use super::{good_upgrade, shared_machine};

fn listening_line(server: &Server) -> Value {
    server
        .logs()
        .iter()
        .find_map(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .filter(|entry| entry["msg"] == "listening")
        })
        .expect("a listening line")
}

#[tokio::test]
async fn metrics_move_to_their_own_listener() {
    let _machine = shared_machine().await;
    let server = Roomcast::debug()
        .env("ROOMCAST_METRICS_ADDR", "127.0.0.1:0")
        .start();
    let listening = listening_line(&server);
    let metrics_addr: SocketAddr = listening["metrics_addr"]
        .as_str()
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no metrics_addr in {listening}"));
    assert_ne!(metrics_addr.port(), 0, "{listening}");
    assert_ne!(metrics_addr, server.addr());

    let page = get(metrics_addr, "/metrics").await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(metrics::sample(&page.text(), "roomcast_ready"), Some(1));
    for path in ["/healthz", "/readyz"] {
        assert_eq!(get(metrics_addr, path).await.status, 200, "{path}");
    }
    for path in ["/", "/chat/lobby/", "/api/rooms/lobby/messages", "/nope"] {
        assert_eq!(get(metrics_addr, path).await.status, 404, "{path}");
    }
    let upgrade = good_upgrade("/ws/chat/lobby/", "");
    assert_eq!(
        exchange(metrics_addr, upgrade.as_bytes()).await.status,
        404,
        "no WebSocket on the metrics listener"
    );

    let public = server.addr();
    assert_eq!(get(public, "/metrics").await.status, 404);
    for path in ["/healthz", "/readyz", "/"] {
        assert_eq!(get(public, path).await.status, 200, "{path}");
    }
}

#[tokio::test]
async fn without_a_metrics_address_the_public_port_serves_metrics() {
    let _machine = shared_machine().await;
    let server = Roomcast::debug().start();
    let listening = listening_line(&server);
    assert!(listening["metrics_addr"].is_null(), "{listening}");
    let page = get(server.addr(), "/metrics").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("roomcast_address_refusals_total"));
    assert!(page.text().contains("roomcast_rate_limited_total"));
}
