//! The chat WebSocket with the embedded broker: a server in this process, real clients over
//! loopback.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::Value;
use testkit::ws::{Ws, chat, connect, expect_close, next_message, recv_json, send_chat};
use testkit::{Endpoint, InProcess, http};
use tokio_tungstenite::tungstenite::Message;

async fn welcome(ws: &mut Ws) -> Value {
    let frame = recv_json(ws).await;
    assert_eq!(frame["type"], "welcome", "{frame}");
    assert!(frame.get("message").is_none());
    frame
}

#[tokio::test]
async fn every_member_sender_included_gets_each_message_with_its_seq() {
    let server = InProcess::start(&[]);
    let url = server.ws_url("/ws/chat/lobby/");
    let mut alice = connect(&url, false).await;
    let mut bob = connect(&url, false).await;
    server.wait_metric("roomcast_websockets_open", 2).await;

    send_chat(&mut alice, "hello from alice").await;
    for ws in [&mut alice, &mut bob] {
        assert_eq!(
            chat(&recv_json(ws).await),
            ("hello from alice".to_string(), 1)
        );
    }
    send_chat(&mut bob, "hi \"alice\" ✓").await;
    for ws in [&mut alice, &mut bob] {
        assert_eq!(
            chat(&recv_json(ws).await),
            ("hi \"alice\" ✓".to_string(), 2)
        );
    }
}

#[tokio::test]
async fn extra_keys_are_ignored_like_channels_does() {
    let server = InProcess::start(&[]);
    let mut ws = connect(&server.ws_url("/ws/chat/lobby"), false).await;
    ws.send(Message::text(
        r#"{"message":"hi","user":"x","extra":[1,2]}"#,
    ))
    .await
    .unwrap();
    let frame = recv_json(&mut ws).await;
    let ts = frame["ts"].as_u64().expect("a server timestamp");
    assert_eq!(
        frame,
        serde_json::json!({ "message": "hi", "seq": 1, "ts": ts }),
        "a client's own user key is not passed on"
    );
}

#[tokio::test]
async fn rooms_are_isolated_and_each_keeps_its_own_order() {
    let server = InProcess::start(&[]);
    let mut rooms = Vec::new();
    for room in ["red", "green", "blue"] {
        let url = server.ws_url(&format!("/ws/chat/{room}/"));
        let members = vec![
            connect(&url, false).await,
            connect(&url, false).await,
            connect(&url, false).await,
        ];
        rooms.push((room, members));
    }
    server.wait_metric("roomcast_websockets_open", 9).await;
    server.wait_metric("roomcast_rooms", 3).await;

    // Every member of every room publishes at once.
    const PER_MEMBER: usize = 20;
    let mut senders = Vec::new();
    for (room, members) in rooms.iter_mut() {
        for (index, ws) in members.iter_mut().enumerate() {
            let room = room.to_string();
            let ws: &mut Ws = ws;
            senders.push(async move {
                for n in 0..PER_MEMBER {
                    send_chat(ws, &format!("{room}:{index}:{n}")).await;
                }
            });
        }
    }
    futures_util::future::join_all(senders).await;

    for (room, members) in rooms.iter_mut() {
        let mut orders = Vec::new();
        for ws in members.iter_mut() {
            let mut seen = Vec::new();
            for expected_seq in 1..=(3 * PER_MEMBER as u64) {
                let (message, seq) = chat(&recv_json(ws).await);
                assert_eq!(seq, expected_seq);
                assert!(
                    message.starts_with(&format!("{room}:")),
                    "{message} leaked into {room}"
                );
                seen.push(message);
            }
            // Each publisher's own messages arrive in the order it sent them.
            for index in 0..3 {
                let own: Vec<_> = seen
                    .iter()
                    .filter(|m| m.starts_with(&format!("{room}:{index}:")))
                    .collect();
                let expected: Vec<_> = (0..PER_MEMBER)
                    .map(|n| format!("{room}:{index}:{n}"))
                    .collect();
                assert_eq!(own, expected.iter().collect::<Vec<_>>());
            }
            orders.push(seen);
        }
        assert!(
            orders.windows(2).all(|pair| pair[0] == pair[1]),
            "members of {room} disagree on order"
        );
    }
}

#[tokio::test]
async fn many_clients_in_one_room_all_receive_everything() {
    // 100 clients from one address: above the default per-address upgrade burst.
    let server = InProcess::start(&[("ROOMCAST_UPGRADE_BURST", "200")]);
    let url = server.ws_url("/ws/chat/crowd/");
    let mut members = Vec::new();
    for _ in 0..100 {
        members.push(connect(&url, false).await);
    }
    server.wait_metric("roomcast_websockets_open", 100).await;
    // One member publishes, waiting for its own copy so the publishes are ordered.
    for n in 1..=10 {
        send_chat(&mut members[0], &format!("m{n}")).await;
        assert_eq!(
            chat(&recv_json(&mut members[0]).await),
            (format!("m{n}"), n)
        );
    }
    for ws in members.iter_mut().skip(1) {
        for n in 1..=10 {
            assert_eq!(chat(&recv_json(ws).await), (format!("m{n}"), n));
        }
    }
}

#[tokio::test]
async fn extended_clients_get_a_welcome_and_resume_with_since() {
    let server = InProcess::start(&[("ROOMCAST_HISTORY", "5")]);
    let url = server.ws_url("/ws/chat/resume/");
    let mut keeper = connect(&url, true).await;
    let hello = welcome(&mut keeper).await;
    assert_eq!(hello["room"], "resume");
    assert_eq!(hello["seq"], 0);
    let epoch = hello["epoch"].as_str().unwrap().to_string();
    for n in 1..=8 {
        send_chat(&mut keeper, &format!("n{n}")).await;
        assert_eq!(chat(&recv_json(&mut keeper).await).1, n);
    }

    // Within the history: exactly the missed messages, then live ones.
    let mut resumed = connect(
        &server.ws_url(&format!("/ws/chat/resume/?since=6&epoch={epoch}")),
        false,
    )
    .await;
    assert_eq!(welcome(&mut resumed).await["seq"], 8);
    assert_eq!(chat(&recv_json(&mut resumed).await), ("n7".to_string(), 7));
    assert_eq!(chat(&recv_json(&mut resumed).await), ("n8".to_string(), 8));
    send_chat(&mut keeper, "n9").await;
    assert_eq!(chat(&recv_json(&mut resumed).await), ("n9".to_string(), 9));

    // Past the 5-message history: a reset notice, then what history remains.
    let mut late = connect(
        &server.ws_url(&format!("/ws/chat/resume/?since=1&epoch={epoch}")),
        true,
    )
    .await;
    welcome(&mut late).await;
    let reset = recv_json(&mut late).await;
    assert_eq!(
        (reset["type"].as_str(), reset["reason"].as_str()),
        (Some("reset"), Some("history"))
    );
    assert!(reset.get("message").is_none());
    for seq in 5..=9 {
        assert_eq!(chat(&recv_json(&mut late).await).1, seq);
    }

    // Another epoch (the room's history was lost): reset with reason epoch.
    let mut stranger = connect(
        &server.ws_url("/ws/chat/resume/?since=3&epoch=other.0"),
        true,
    )
    .await;
    welcome(&mut stranger).await;
    assert_eq!(recv_json(&mut stranger).await["reason"], "epoch");
}

#[tokio::test]
async fn a_room_emptied_and_recreated_starts_a_new_epoch() {
    let server = InProcess::start(&[]);
    let url = server.ws_url("/ws/chat/fleeting/");
    let mut first = connect(&url, true).await;
    let epoch = welcome(&mut first).await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    send_chat(&mut first, "one").await;
    recv_json(&mut first).await;
    first.close(None).await.unwrap();
    drop(first);
    server.wait_metric("roomcast_rooms", 0).await;

    let mut again = connect(
        &server.ws_url(&format!("/ws/chat/fleeting/?since=1&epoch={epoch}")),
        true,
    )
    .await;
    let hello = welcome(&mut again).await;
    assert_ne!(hello["epoch"], epoch.as_str());
    assert_eq!(hello["seq"], 0);
    assert_eq!(recv_json(&mut again).await["type"], "reset");
}

#[tokio::test]
async fn invalid_json_closes_plain_clients_with_1007_and_others_carry_on() {
    let server = InProcess::start(&[]);
    let url = server.ws_url("/ws/chat/strict/");
    let mut bystander = connect(&url, false).await;
    for bad in ["not json", r#"{"message": 42}"#, r#"{"text": "hi"}"#, "[]"] {
        let mut offender = connect(&url, false).await;
        offender.send(Message::text(bad)).await.unwrap();
        let (code, reason) = expect_close(&mut offender).await;
        assert_eq!(code, 1007, "{bad}");
        assert!(!reason.is_empty());
    }
    send_chat(&mut bystander, "still here").await;
    assert_eq!(chat(&recv_json(&mut bystander).await).0, "still here");
}

#[tokio::test]
async fn extended_clients_get_error_frames_and_stay_connected() {
    let server = InProcess::start(&[]);
    let mut ws = connect(&server.ws_url("/ws/chat/lenient/"), true).await;
    welcome(&mut ws).await;
    ws.send(Message::text("{oops")).await.unwrap();
    let error = recv_json(&mut ws).await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("invalid_json"))
    );
    assert!(error.get("message").is_none());
    ws.send(Message::text(r#"{"message": null}"#))
        .await
        .unwrap();
    assert_eq!(recv_json(&mut ws).await["code"], "bad_message");
    send_chat(&mut ws, "fine").await;
    assert_eq!(chat(&recv_json(&mut ws).await), ("fine".to_string(), 1));
}

#[tokio::test]
async fn binary_frames_close_with_1003() {
    let server = InProcess::start(&[]);
    let mut ws = connect(&server.ws_url("/ws/chat/text-only/"), true).await;
    welcome(&mut ws).await;
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(expect_close(&mut ws).await.0, 1003);
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let server = InProcess::start(&[("ROOMCAST_MAX_MESSAGE_BYTES", "1024")]);
    let url = server.ws_url("/ws/chat/small/");
    let mut bystander = connect(&url, false).await;
    let mut ws = connect(&url, false).await;
    send_chat(&mut ws, &"x".repeat(2000)).await;
    assert_eq!(expect_close(&mut ws).await.0, 1009);
    send_chat(&mut bystander, &"y".repeat(900)).await;
    assert_eq!(chat(&recv_json(&mut bystander).await).1, 1);
}

#[tokio::test]
async fn bad_room_names_are_not_found() {
    let server = InProcess::start(&[]);
    let long = "r".repeat(101);
    for room in ["bad%20room", "a,b", "caf%C3%A9", long.as_str()] {
        let request = format!(
            "GET /ws/chat/{room}/ HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        let response = http::exchange(server.addr(), request.as_bytes()).await;
        assert_eq!(response.status, 404, "{room}: {response:?}");
    }
}

#[tokio::test]
async fn a_slow_reader_is_closed_while_the_others_keep_up() {
    // The publisher floods on purpose, far above the default publish rate.
    let server = InProcess::start(&[
        ("ROOMCAST_SEND_QUEUE", "8"),
        ("ROOMCAST_HISTORY", "0"),
        ("ROOMCAST_RATE", "100000"),
        ("ROOMCAST_BURST", "100000"),
    ]);
    let url = server.ws_url("/ws/chat/firehose/");
    let mut slow = connect(&url, false).await;
    let mut publisher = connect(&url, false).await;
    let mut fast = connect(&url, false).await;
    server.wait_metric("roomcast_websockets_open", 3).await;

    // Large messages fill the slow reader's socket buffers, then its queue.
    let body = "z".repeat(60 * 1024);
    const COUNT: u64 = 400;
    // In lockstep with the fast reader and the publisher's own copy, so only the
    // silent member falls behind.
    for seq in 1..=COUNT {
        send_chat(&mut publisher, &body).await;
        assert_eq!(chat(&recv_json(&mut publisher).await).1, seq);
        assert_eq!(chat(&recv_json(&mut fast).await).1, seq);
    }
    assert!(server.metric("roomcast_slow_reader_drops_total").await >= 1);

    // The slow reader gets what fit, in order, then the documented close code.
    let mut last_seq = 0;
    loop {
        match next_message(&mut slow).await {
            Some(Ok(Message::Text(text))) => {
                let (_, seq) = chat(&serde_json::from_str(text.as_str()).unwrap());
                assert_eq!(seq, last_seq + 1);
                last_seq = seq;
            }
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 4008);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(last_seq < COUNT, "the slow reader was never dropped");
}

#[tokio::test]
async fn the_heartbeat_drops_a_silent_peer() {
    let server = InProcess::start(&[
        ("ROOMCAST_HEARTBEAT_MS", "100"),
        ("ROOMCAST_PEER_TIMEOUT_MS", "400"),
    ]);
    let url = server.ws_url("/ws/chat/quiet/");
    // Never polled, so it never answers pings.
    let silent = connect(&url, false).await;
    let mut lively = connect(&url, false).await;
    server.wait_metric("roomcast_websockets_open", 2).await;
    // The lively client answers pings by reading; the silent one is dropped.
    let reading = async {
        tokio::time::timeout(Duration::from_millis(1500), next_message(&mut lively))
            .await
            .err();
    };
    let dropped = server.wait_metric("roomcast_websockets_open", 1);
    tokio::join!(reading, dropped);
    send_chat(&mut lively, "alive").await;
    assert_eq!(chat(&recv_json(&mut lively).await).0, "alive");
    drop(silent);
}
