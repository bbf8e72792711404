//! Graceful shutdown of the real binary: readiness, close 1012, flush, deadline, exit codes.

use std::time::Duration;

use testkit::ws::{chat, connect, expect_close, recv_json, send_chat};
use testkit::{Endpoint, Server};

#[tokio::test]
async fn sigterm_closes_every_client_with_1012_after_what_was_published() {
    let mut server = Server::start(&[
        ("ROOMCAST_SHUTDOWN_DELAY_MS", "200"),
        ("ROOMCAST_DRAIN_DEADLINE_MS", "3000"),
    ]);
    let mut clients = Vec::new();
    for (room, extended) in [
        ("a", false),
        ("a", true),
        ("b", false),
        ("b", true),
        ("a", false),
    ] {
        let mut ws = connect(&server.ws_url(&format!("/ws/chat/{room}/")), extended).await;
        if extended {
            assert_eq!(recv_json(&mut ws).await["type"], "welcome");
        }
        clients.push(ws);
    }
    server.wait_metric("roomcast_websockets_open", 5).await;

    // Publish in room a and wait for the publisher's own last copy: all of it is queued.
    for n in 1..=20 {
        send_chat(&mut clients[0], &format!("before-{n}")).await;
    }
    for n in 1..=20 {
        assert_eq!(chat(&recv_json(&mut clients[0]).await).1, n);
    }
    server.signal("TERM");

    for (index, ws) in clients.iter_mut().enumerate().skip(1) {
        if index != 2 && index != 3 {
            for n in 1..=20 {
                assert_eq!(chat(&recv_json(ws).await), (format!("before-{n}"), n));
            }
        }
        assert_eq!(expect_close(ws).await.0, 1012, "client {index}");
    }
    assert_eq!(expect_close(&mut clients[0]).await.0, 1012);

    let (status, _) = server.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    let logs = server.logs();
    let stopped = logs
        .iter()
        .find(|line| line.contains("\"msg\":\"stopped\""))
        .expect("a stopped line");
    assert!(stopped.contains("\"drained\":true"), "{stopped}");
    assert!(stopped.contains("\"websockets_closed\":5"), "{stopped}");
}

#[tokio::test]
async fn a_peer_that_never_answers_cannot_hold_the_exit_past_the_deadline() {
    let mut server = Server::start(&[("ROOMCAST_DRAIN_DEADLINE_MS", "300")]);
    // Never polled: it neither reads our close nor answers it.
    let _silent = connect(&server.ws_url("/ws/chat/stuck/"), false).await;
    server.wait_metric("roomcast_websockets_open", 1).await;
    server.signal("TERM");
    let (status, _) = server.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    assert!(
        server
            .logs()
            .iter()
            .any(|line| line.contains("drain deadline passed"))
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut server = Server::start(&[("ROOMCAST_SHUTDOWN_DELAY_MS", "30000")]);
    server.signal("TERM");
    server.wait_metric("roomcast_ready", 0).await;
    server.signal("INT");
    // Far below the 30 s delay the first signal started.
    let (status, _) = server.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(128 + 2));
}

#[tokio::test]
async fn sigint_shuts_down_like_sigterm() {
    let mut server = Server::start(&[]);
    let mut ws = connect(&server.ws_url("/ws/chat/ctrl-c/"), false).await;
    server.wait_metric("roomcast_websockets_open", 1).await;
    server.signal("INT");
    assert_eq!(expect_close(&mut ws).await.0, 1012);
    assert_eq!(server.wait_exit(Duration::from_secs(5)).0.code(), Some(0));
}
