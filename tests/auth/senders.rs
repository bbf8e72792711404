//! The sender on every frame, set by the server from the token (a client's own `user` key is
//! ignored), and the three ways a token travels: the `Authorization` header, a
//! `roomcast.token.<jwt>` subprotocol entry (never echoed) and a cookie, read in that order.

use futures_util::SinkExt;
use serde_json::{Value, json};
use testkit::ws::{Ws, recv_json, send_chat};
use testkit::{Endpoint, InProcess};
use tokio_tungstenite::tungstenite::Message;

use super::tokens::{self, user};
use super::{
    assert_no_token, assert_refused, bearer, env_with_mode, expect_chat, extended, join,
    join_extended, raw_upgrade, required_env, required_server, welcome,
};

async fn send_raw(client: &mut Ws, frame: Value) {
    client
        .send(Message::text(frame.to_string()))
        .await
        .expect("send");
}

/// Every member sees who sent each message: id and name, or the id alone.
pub async fn frames_name_their_sender(server: &impl Endpoint) {
    let path = "/ws/chat/names/";
    let ada = user("42", json!({ "name": "Ada" }));
    let bob = user("7", json!({}));
    let zoe = user("z\"1", json!({ "name": "Zoë \"Z\" <b>✓</b>" }));
    let mut clients = [
        join(server, path, &[bearer(&ada)]).await,
        join_extended(server, path, &bob).await,
        join(server, path, &[bearer(&zoe)]).await,
    ];
    let senders = [
        json!({ "id": "42", "name": "Ada" }),
        json!({ "id": "7" }),
        json!({ "id": "z\"1", "name": "Zoë \"Z\" <b>✓</b>" }),
    ];
    for (index, sender) in senders.iter().enumerate() {
        let message = format!("from {index}");
        send_chat(&mut clients[index], &message).await;
        for client in clients.iter_mut() {
            let frame = expect_chat(client, &message, Some(sender)).await;
            assert_eq!(frame["seq"], index as u64 + 1);
        }
    }
}

/// A client cannot name itself: `user`, `seq` and `ts` in what it sends are replaced.
pub async fn a_client_cannot_claim_another_user(server: &impl Endpoint) {
    let path = "/ws/chat/spoof/";
    let mallory = user("mallory", json!({ "name": "Mallory" }));
    let mut plain = join(server, path, &[bearer(&mallory)]).await;
    let mut extended_client = join_extended(server, path, &mallory).await;
    let spoofed = json!({
        "message": "I am root",
        "user": { "id": "0", "name": "root" },
        "seq": 999,
        "ts": 1,
    });
    let mallory_user = json!({ "id": "mallory", "name": "Mallory" });
    send_raw(&mut plain, spoofed.clone()).await;
    send_raw(&mut extended_client, spoofed).await;
    for seq in [1, 2] {
        for client in [&mut plain, &mut extended_client] {
            let frame = expect_chat(client, "I am root", Some(&mallory_user)).await;
            assert_eq!(frame["seq"], seq, "{frame}");
            assert!(frame["ts"].as_u64().unwrap() > 1_700_000_000_000, "{frame}");
        }
    }
    send_raw(
        &mut plain,
        json!({ "message": "string user", "user": "root" }),
    )
    .await;
    expect_chat(&mut plain, "string user", Some(&mallory_user)).await;
}

/// An anonymous client (optional mode) cannot name itself either.
pub async fn an_anonymous_client_stays_anonymous(server: &impl Endpoint) {
    let mut anonymous = join(server, "/ws/chat/spoof/", &[]).await;
    let spoofed = json!({ "message": "trust me", "user": { "id": "42", "name": "Ada" } });
    send_raw(&mut anonymous, spoofed).await;
    expect_chat(&mut anonymous, "trust me", None).await;
}

/// The token as a subprotocol entry: the 101 echoes `roomcast.v1` when it was offered, and
/// never the token entry.
pub async fn the_subprotocol_carries_a_token_and_is_not_echoed(server: &impl Endpoint) {
    let path = "/ws/chat/subprotocol/";
    let ada = user("42", json!({ "name": "Ada" }));
    let entry = format!("roomcast.token.{ada}");
    let ada_user = json!({ "id": "42", "name": "Ada" });

    let only_token = [("Sec-WebSocket-Protocol", entry.clone())];
    let (response, mut plain) = raw_upgrade(server, path, &only_token).await;
    assert_eq!(
        response.header("sec-websocket-protocol"),
        None,
        "{response:?}"
    );
    assert_no_token(&response, &ada);
    send_chat(&mut plain, "plain").await;
    expect_chat(&mut plain, "plain", Some(&ada_user)).await;

    for offered in [
        format!("roomcast.v1, {entry}"),
        format!("{entry}, roomcast.v1"),
    ] {
        let headers = [("Sec-WebSocket-Protocol", offered)];
        let (response, mut client) = raw_upgrade(server, path, &headers).await;
        assert_eq!(
            response.header("sec-websocket-protocol"),
            Some("roomcast.v1"),
            "{response:?}"
        );
        assert_no_token(&response, &ada);
        welcome(&mut client).await;
        send_chat(&mut client, "extended").await;
        expect_chat(&mut client, "extended", Some(&ada_user)).await;
    }

    // A WebSocket library that checks the answer against what it offered accepts it.
    let offered = [("Sec-WebSocket-Protocol", format!("roomcast.v1, {entry}"))];
    let mut client = join(server, path, &offered).await;
    welcome(&mut client).await;

    let forged = tokens::tampered_signature(&ada);
    let headers = [(
        "Sec-WebSocket-Protocol",
        format!("roomcast.v1, roomcast.token.{forged}"),
    )];
    let refusal = (401, "token signature invalid");
    assert_refused(server, "forged entry", path, &headers, &forged, refusal).await;
}

/// The token in a cookie, among others, under the configured name.
pub async fn a_cookie_carries_a_token(server: &impl Endpoint, cookie: &str) {
    let path = "/ws/chat/cookie/";
    let ada = user("42", json!({ "name": "Ada" }));
    let jar = format!("theme=dark; {cookie}={ada}; lang=en");
    let mut client = join(server, path, &[("Cookie", jar), extended()]).await;
    welcome(&mut client).await;
    send_chat(&mut client, "by cookie").await;
    let ada_user = json!({ "id": "42", "name": "Ada" });
    expect_chat(&mut client, "by cookie", Some(&ada_user)).await;

    let other_name = format!("not_{cookie}={ada}");
    let what = "a cookie under another name";
    let refusal = (401, "token required");
    assert_refused(server, what, path, &[("Cookie", other_name)], &ada, refusal).await;
}

/// The header wins over the subprotocol entry, which wins over the cookie; a bad token in
/// the first place is not rescued by a good one further down.
pub async fn transports_are_read_in_order(server: &impl Endpoint) {
    let path = "/ws/chat/order/";
    let [header, entry, cookie] = ["header", "entry", "cookie"].map(|sub| user(sub, json!({})));
    let protocol = (
        "Sec-WebSocket-Protocol",
        format!("roomcast.v1, roomcast.token.{entry}"),
    );
    let jar = ("Cookie", format!("roomcast_token={cookie}"));
    let cases = [
        (
            vec![bearer(&header), protocol.clone(), jar.clone()],
            "header",
        ),
        (vec![protocol.clone(), jar.clone()], "entry"),
        (vec![extended(), jar.clone()], "cookie"),
    ];
    for (headers, sender) in cases {
        let mut client = join(server, path, &headers).await;
        welcome(&mut client).await;
        send_chat(&mut client, sender).await;
        let frame = recv_json(&mut client).await;
        assert_eq!(frame["user"]["id"], sender, "{frame}");
    }
    let forged = tokens::tampered_signature(&header);
    let headers = [bearer(&forged), protocol, jar];
    let refusal = (401, "token signature invalid");
    assert_refused(server, "bad header first", path, &headers, &forged, refusal).await;
}

#[tokio::test]
async fn every_member_sees_the_sender_of_each_message() {
    frames_name_their_sender(&required_server()).await;
}

#[tokio::test]
async fn a_user_key_sent_by_a_client_is_ignored() {
    a_client_cannot_claim_another_user(&required_server()).await;
    let optional = InProcess::start(&env_with_mode("optional"));
    an_anonymous_client_stays_anonymous(&optional).await;
}

#[tokio::test]
async fn a_subprotocol_entry_carries_the_token_and_is_never_echoed() {
    the_subprotocol_carries_a_token_and_is_not_echoed(&required_server()).await;
}

#[tokio::test]
async fn a_cookie_carries_the_token_under_the_configured_name() {
    a_cookie_carries_a_token(&required_server(), "roomcast_token").await;
    let mut env = required_env();
    env.push(("ROOMCAST_AUTH_COOKIE", "session_jwt"));
    let renamed = InProcess::start(&env);
    a_cookie_carries_a_token(&renamed, "session_jwt").await;
    let ada = user("42", json!({}));
    let jar = ("Cookie", format!("roomcast_token={ada}"));
    let path = "/ws/chat/cookie/";
    let refusal = (401, "token required");
    assert_refused(&renamed, "the default name", path, &[jar], &ada, refusal).await;
}

#[tokio::test]
async fn the_header_then_the_subprotocol_then_the_cookie() {
    transports_are_read_in_order(&required_server()).await;
}
