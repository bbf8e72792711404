//! Expiry mid-session: close 4001 at `exp` plus the 30 s leeway, unless an extended client
//! sent `{"type": "refresh"}` with a valid token for the same user still granting the room;
//! a refused refresh is an error frame `forbidden` and the old expiry stands.
//!
//! Tokens here have `exp` just under 30 s in the past, so they have a second or a few left.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{Value, json};
use testkit::Endpoint;
use testkit::ws::{Ws, expect_close, recv_json, send_chat};
use tokio_tungstenite::tungstenite::Message;

use super::tokens::{self, LEEWAY, now, user};
use super::{bearer, expect_chat, join, join_extended, required_server};

const CLOSE_TOKEN_EXPIRED: u16 = 4001;

/// A token for `sub` with `seconds` left: its `exp` is already past, inside the leeway.
fn expiring_in(sub: &str, seconds: u64, extra: Value) -> String {
    let mut claims = tokens::claims(sub, extra);
    claims["exp"] = json!(now() + seconds - LEEWAY);
    tokens::token(&claims)
}

async fn refresh(client: &mut Ws, token: &str) {
    let frame = json!({ "type": "refresh", "token": token }).to_string();
    client.send(Message::text(frame)).await.expect("send");
}

async fn expect_expired(client: &mut Ws) {
    let (code, reason) = expect_close(client).await;
    assert_eq!(code, CLOSE_TOKEN_EXPIRED, "{reason}");
    assert!(reason.contains("expired"), "{reason}");
}

/// Plain and extended clients alike are closed 4001 when the token runs out.
pub async fn an_expired_session_is_closed_with_4001(server: &impl Endpoint) {
    let path = "/ws/chat/expiry/";
    let started = Instant::now();
    let short = expiring_in("42", 1, json!({}));
    let mut extended_client = join_extended(server, path, &short).await;
    let mut plain = join(server, path, &[bearer(&short)]).await;
    for client in [&mut extended_client, &mut plain] {
        expect_expired(client).await;
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(4), "closed after {elapsed:?}");
}

/// A fresh token for the same user moves the close to its own expiry.
pub async fn a_refresh_keeps_the_session_open(server: &impl Endpoint) {
    let path = "/ws/chat/refresh/";
    let started = Instant::now();
    let first = expiring_in("42", 2, json!({ "name": "Ada" }));
    let mut client = join_extended(server, path, &first).await;
    refresh(&mut client, &expiring_in("42", 5, json!({ "name": "Ada" }))).await;

    // Past the first token's end (at most 2 s), the session still carries messages.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    send_chat(&mut client, "still here").await;
    let ada = json!({ "id": "42", "name": "Ada" });
    expect_chat(&mut client, "still here", Some(&ada)).await;

    // The fresh token's own end closes it.
    expect_expired(&mut client).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(7),
        "closed after {elapsed:?}"
    );
}

/// Refreshes that are refused: another user, a room no longer granted, a bad token. Each
/// gets `forbidden` naming the rule, and the first token's expiry stands.
pub async fn a_refused_refresh_leaves_the_expiry(server: &impl Endpoint) {
    let path = "/ws/chat/refresh-refused/";
    let started = Instant::now();
    let mut client = join_extended(server, path, &expiring_in("42", 3, json!({}))).await;
    let long_lived = json!({ "exp": now() + 3600 });
    let refused = [
        (
            user("43", long_lived.clone()),
            "token claims missing or invalid",
        ),
        (
            user("42", json!({ "exp": now() + 3600, "rooms": ["elsewhere"] })),
            "token claims missing or invalid",
        ),
        (
            tokens::tampered_signature(&user("42", long_lived.clone())),
            "token signature invalid",
        ),
        (user("42", json!({ "exp": now() - 3600 })), "token expired"),
    ];
    for (token, rule) in refused {
        refresh(&mut client, &token).await;
        let error = recv_json(&mut client).await;
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["code"], "forbidden", "{error}");
        assert_eq!(error["detail"], rule, "{error}");
        assert!(!error.to_string().contains(tokens::signature_of(&token)));
    }
    expect_expired(&mut client).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "closed after {elapsed:?}");
}

/// A refresh is an extended frame: a plain client's is an invalid chat message (1007).
pub async fn a_plain_client_cannot_refresh(server: &impl Endpoint) {
    let token = expiring_in("42", 5, json!({}));
    let mut plain = join(server, "/ws/chat/plain-refresh/", &[bearer(&token)]).await;
    refresh(&mut plain, &user("42", json!({}))).await;
    let (code, reason) = expect_close(&mut plain).await;
    assert_eq!(code, 1007, "{reason}");
}

#[tokio::test]
async fn a_session_whose_token_expires_is_closed_with_4001() {
    an_expired_session_is_closed_with_4001(&required_server()).await;
}

#[tokio::test]
async fn a_refresh_for_the_same_user_keeps_the_session_past_the_first_expiry() {
    a_refresh_keeps_the_session_open(&required_server()).await;
}

#[tokio::test]
async fn a_refresh_for_another_user_or_room_is_refused_and_the_expiry_stands() {
    a_refused_refresh_leaves_the_expiry(&required_server()).await;
}

#[tokio::test]
async fn only_extended_clients_can_refresh() {
    a_plain_client_cannot_refresh(&required_server()).await;
}
