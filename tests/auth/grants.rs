//! What a token grants: the rooms it may join (names, `prefix-*` patterns, `*`, all when
//! absent; 403 at the upgrade otherwise) and the rooms it may post in (all of `rooms` when
//! absent; an error frame for extended clients, close 1008 for plain ones otherwise).

use serde_json::{Value, json};
use testkit::Endpoint;
use testkit::ws::{self, expect_close, recv_json, send_chat};

use super::tokens::user;
use super::{assert_refused, bearer, expect_chat, join, join_extended, required_server};

const NOT_GRANTED: (u16, &str) = (403, "room not granted by the token");

/// Joining is checked against `rooms` at the upgrade.
pub async fn rooms_not_granted_are_403(server: &impl Endpoint) {
    let grants: [(Value, &[&str], &[&str]); 5] = [
        (
            json!(["lobby"]),
            &["lobby"],
            &["sales", "lobby2", "Lobby", "lobb"],
        ),
        (
            json!(["support-*"]),
            &["support-1", "support-billing", "support-"],
            &["support", "supportx", "xsupport-1", "sales"],
        ),
        (json!(["*"]), &["lobby", "anything-at-all"], &[]),
        (json!([]), &[], &["lobby", "support-1"]),
        (json!(["a", "b.*"]), &["a", "b.c", "b."], &["b", "ab", "c"]),
    ];
    for (rooms, allowed, refused) in grants {
        let token = user("7", json!({ "rooms": rooms }));
        for room in allowed {
            let mut client = join(server, &format!("/ws/chat/{room}/"), &[bearer(&token)]).await;
            send_chat(&mut client, "in").await;
            let frame = recv_json(&mut client).await;
            assert_eq!(frame["message"], "in", "{rooms} in {room}: {frame}");
        }
        for room in refused {
            let what = format!("{rooms} in {room}");
            let path = format!("/ws/chat/{room}/");
            assert_refused(server, &what, &path, &[bearer(&token)], &token, NOT_GRANTED).await;
        }
    }
    let everywhere = user("7", json!({}));
    join(server, "/ws/chat/no-rooms-claim/", &[bearer(&everywhere)]).await;
}

/// A reader who may not post: extended clients get `forbidden` and stay; plain ones get 1008.
/// Nothing of theirs is published.
pub async fn posting_where_not_granted_is_refused(server: &impl Endpoint) {
    let path = "/ws/chat/news/";
    let editor = user("editor", json!({ "rooms": ["news"] }));
    let reader = user(
        "reader",
        json!({ "rooms": ["news", "lobby"], "publish": ["lobby"] }),
    );
    let mut editor_client = join_extended(server, path, &editor).await;
    let mut reader_client = join_extended(server, path, &reader).await;

    send_chat(&mut reader_client, "let me in").await;
    let error = recv_json(&mut reader_client).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "forbidden", "{error}");
    assert!(error["detail"].is_string() && error.get("message").is_none());

    send_chat(&mut editor_client, "headline").await;
    let editor_user = json!({ "id": "editor" });
    for client in [&mut editor_client, &mut reader_client] {
        let frame = expect_chat(client, "headline", Some(&editor_user)).await;
        assert_eq!(frame["seq"], 1, "the refused message took no seq: {frame}");
    }

    let mut plain_reader = join(server, path, &[bearer(&reader)]).await;
    send_chat(&mut plain_reader, "let me in").await;
    let (code, reason) = expect_close(&mut plain_reader).await;
    assert_eq!(code, 1008, "{reason}");
    send_chat(&mut editor_client, "second").await;
    let frame = expect_chat(&mut editor_client, "second", Some(&editor_user)).await;
    assert_eq!(frame["seq"], 2, "{frame}");

    // The reader may post where `publish` allows.
    let mut in_lobby = join_extended(server, "/ws/chat/lobby/", &reader).await;
    send_chat(&mut in_lobby, "lobby is fine").await;
    expect_chat(
        &mut in_lobby,
        "lobby is fine",
        Some(&json!({ "id": "reader" })),
    )
    .await;
}

/// `publish` as patterns and as an empty list; absent, it is what `rooms` is.
pub async fn publish_grants_follow_the_same_patterns(server: &impl Endpoint) {
    let cases: [(Value, &str, bool); 5] = [
        (json!({ "rooms": ["support-*"] }), "support-3", true),
        (json!({ "publish": ["support-*"] }), "support-3", true),
        (json!({ "publish": ["support-*"] }), "general", false),
        (json!({ "publish": [] }), "general", false),
        (json!({ "rooms": ["*"], "publish": ["*"] }), "general", true),
    ];
    for (grants, room, may_post) in cases {
        let token = user("9", grants.clone());
        let mut client = join_extended(server, &format!("/ws/chat/{room}/"), &token).await;
        send_chat(&mut client, "post").await;
        let frame = ws::recv_json(&mut client).await;
        if may_post {
            assert_eq!(frame["message"], "post", "{grants} in {room}: {frame}");
        } else {
            assert_eq!(frame["code"], "forbidden", "{grants} in {room}: {frame}");
        }
    }
}

#[tokio::test]
async fn joining_a_room_the_token_does_not_grant_is_403() {
    rooms_not_granted_are_403(&required_server()).await;
}

#[tokio::test]
async fn posting_without_the_publish_grant_is_refused() {
    posting_where_not_granted_is_refused(&required_server()).await;
}

#[tokio::test]
async fn publish_grants_take_patterns_and_default_to_rooms() {
    publish_grants_follow_the_same_patterns(&required_server()).await;
}
