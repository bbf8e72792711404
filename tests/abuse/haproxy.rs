//! A real HAProxy in front (`send-proxy-v2`, health checks with `check-send-proxy`): its
//! checks are answered, so it keeps roomcast UP, and its clients are counted by the address
//! each PROXY header names, not by the proxy's.
//!
//! Needs `haproxy` (`apt-get install -y haproxy`); without it the test is skipped, or fails
//! when `CI` is set.

use std::net::SocketAddr;

use testkit::haproxy::Haproxy;
use testkit::net::loopback as port_on_loopback;
use testkit::ws::{chat, recv_json, send_chat};
use testkit::{Endpoint, InProcess, free_port};

use super::{loopback, shared_machine, try_ws_from, ws_from};

fn config(front: SocketAddr, stats: SocketAddr, roomcast: SocketAddr) -> String {
    format!(
        "global
    log stdout format raw local0 notice
defaults
    mode tcp
    log global
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
frontend chat
    bind {front}
    default_backend roomcast
backend roomcast
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host roomcast
    http-check expect status 200
    server app {roomcast} check inter 100ms fall 2 rise 1 send-proxy-v2 check-send-proxy
frontend stats
    mode http
    bind {stats}
    stats enable
    stats uri /stats
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_checks_pass_and_clients_are_counted_by_the_named_address() {
    let _machine = shared_machine().await;
    let Some(program) = Haproxy::program() else {
        return;
    };
    let server = InProcess::start(&[
        ("ROOMCAST_TRUSTED_PROXIES", "127.0.0.1"),
        ("ROOMCAST_MAX_CONNECTIONS_PER_IP", "2"),
    ]);
    let front = port_on_loopback(free_port());
    let stats = port_on_loopback(free_port());
    let mut proxy = Haproxy::start(&program, &config(front, stats, server.addr()), stats);
    proxy.wait_status("roomcast", "app", "UP");

    let (alice, bob) = (loopback(3, 0, 1), loopback(3, 0, 2));
    let path = "/ws/chat/behind-proxy/";
    let _first = ws_from(alice, front, path, false).await;
    let _second = ws_from(alice, front, path, false).await;
    let Err(error) = try_ws_from(alice, front, path, false).await else {
        panic!("a third connection from one client was let in");
    };
    assert!(error.contains("429"), "{error}");
    let mut other = ws_from(bob, front, path, false).await;
    send_chat(&mut other, "through the proxy").await;
    assert_eq!(
        chat(&recv_json(&mut other).await),
        ("through the proxy".to_string(), 1)
    );
    assert_eq!(server.metric("roomcast_address_refusals_total").await, 1);

    // Several checks later (every 100 ms, down after two failures) it is still UP.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        proxy.status("roomcast", "app").starts_with("UP"),
        "{}",
        proxy.output()
    );
}
