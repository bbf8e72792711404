//! The upgrade's token checks: each rule a token breaks is a 401 naming the rule, with a
//! Bearer challenge and never the token; tokens just inside each rule are welcome; optional
//! mode lets anonymous clients in; off mode does not look at tokens at all.

use serde_json::json;
use testkit::Endpoint;
use testkit::http::Connection;
use testkit::ws::{recv_json, send_chat};

use super::tokens::{self, LEEWAY, claims, now, signed, user};
use super::{
    SECRET, assert_refused, bearer, env_with_mode, expect_chat, extended, join, required_env,
    required_server,
};
use testkit::InProcess;

const LOBBY: &str = "/ws/chat/lobby/";

/// Every way a token can fail, in required mode.
pub async fn every_broken_rule_is_a_401_naming_it(server: &impl Endpoint) {
    let at = now();
    let hs256 = json!({ "alg": "HS256", "typ": "JWT" });
    let good = user("42", json!({}));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired past the leeway",
            user("42", json!({ "exp": at - LEEWAY - 1 })),
            "token expired",
        ),
        (
            "expired an hour ago",
            user("42", json!({ "exp": at - 3600 })),
            "token expired",
        ),
        (
            "not valid before a minute from now",
            user("42", json!({ "nbf": at + 60 })),
            "token not valid yet",
        ),
        (
            "for another audience",
            user("42", json!({ "aud": "billing" })),
            "token audience wrong",
        ),
        (
            "for a list of other audiences",
            user("42", json!({ "aud": ["billing", "roomcast2"] })),
            "token audience wrong",
        ),
        (
            "for no audience",
            user("42", json!({ "aud": null })),
            "token audience wrong",
        ),
        (
            "alg none, unsigned",
            tokens::unsecured(&claims("42", json!({}))),
            "token algorithm not HS256",
        ),
        (
            "alg none over a valid HMAC",
            signed(
                &json!({ "alg": "none" }),
                &claims("42", json!({})),
                SECRET.as_bytes(),
            ),
            "token algorithm not HS256",
        ),
        (
            "alg RS256",
            signed(
                &json!({ "alg": "RS256", "typ": "JWT" }),
                &claims("42", json!({})),
                SECRET.as_bytes(),
            ),
            "token algorithm not HS256",
        ),
        (
            "alg HS512",
            signed(
                &json!({ "alg": "HS512" }),
                &claims("42", json!({})),
                SECRET.as_bytes(),
            ),
            "token algorithm not HS256",
        ),
        (
            "a crit header",
            signed(
                &json!({ "alg": "HS256", "crit": ["exp"] }),
                &claims("42", json!({})),
                SECRET.as_bytes(),
            ),
            "token malformed",
        ),
        (
            "a signature with one character changed",
            tokens::tampered_signature(&good),
            "token signature invalid",
        ),
        (
            "other claims under a valid signature",
            tokens::swapped_claims(&good, &claims("1", json!({ "name": "admin" }))),
            "token signature invalid",
        ),
        (
            "no signature",
            format!("{}.", good.rsplit_once('.').unwrap().0),
            "token signature invalid",
        ),
        (
            "signed with another secret",
            signed(
                &hs256,
                &claims("42", json!({})),
                b"another-secret-of-thirty-two-bytes!!",
            ),
            "token signature invalid",
        ),
        (
            "over 4096 bytes",
            tokens::of_length("42", 4100),
            "token too long",
        ),
        (
            "no exp",
            user("42", json!({ "exp": null })),
            "token claims missing or invalid",
        ),
        (
            "no sub",
            user("42", json!({ "sub": null })),
            "token claims missing or invalid",
        ),
        (
            "an empty sub",
            user("", json!({})),
            "token claims missing or invalid",
        ),
        (
            "a sub of 257 bytes",
            user(&"u".repeat(257), json!({})),
            "token claims missing or invalid",
        ),
        (
            "a name of 65 characters",
            user("42", json!({ "name": "n".repeat(65) })),
            "token claims missing or invalid",
        ),
        ("not a JWT", "not-a-jwt".to_string(), "token malformed"),
    ];
    assert_refused(server, "no token", LOBBY, &[], "", (401, "token required")).await;
    for (what, token, reason) in cases {
        assert_refused(
            server,
            what,
            LOBBY,
            &[bearer(&token)],
            &token,
            (401, reason),
        )
        .await;
    }
}

/// Tokens just inside each rule are let in, and the user they name is shown.
pub async fn tokens_at_the_edges_of_the_rules_are_welcome(server: &impl Endpoint) {
    let at = now();
    let longest = tokens::of_length("edge", 4096);
    assert!(longest.len() >= 4095, "{} bytes", longest.len());
    let cases = [
        (
            "expired inside the leeway",
            user("edge", json!({ "exp": at - LEEWAY + 10 })),
        ),
        (
            "not valid yet inside the leeway",
            user("edge", json!({ "nbf": at + LEEWAY - 10 })),
        ),
        (
            "valid since a minute ago",
            user("edge", json!({ "nbf": at - 60 })),
        ),
        (
            "an audience list naming roomcast",
            user("edge", json!({ "aud": ["billing", "roomcast"] })),
        ),
        ("4096 bytes at most", longest),
        ("a sub of 256 bytes", user(&"e".repeat(256), json!({}))),
        (
            "a name of 64 characters",
            user("edge", json!({ "name": "é".repeat(64) })),
        ),
    ];
    for (what, token) in cases {
        let mut client = join(server, LOBBY, &[bearer(&token)]).await;
        send_chat(&mut client, what).await;
        let frame = recv_json(&mut client).await;
        assert_eq!(frame["message"], what, "{frame}");
        assert!(frame["user"]["id"].is_string(), "{what}: {frame}");
    }
}

/// `ROOMCAST_AUTH_AUDIENCE` replaces `roomcast` as the audience a token must name.
pub async fn a_configured_audience_replaces_the_default(server: &impl Endpoint) {
    let ours = user("42", json!({ "aud": "chat.example.com" }));
    let listed = user("42", json!({ "aud": ["billing", "chat.example.com"] }));
    for token in [ours, listed] {
        let mut client = join(server, LOBBY, &[bearer(&token)]).await;
        send_chat(&mut client, "audience").await;
        expect_chat(&mut client, "audience", Some(&json!({ "id": "42" }))).await;
    }
    let default = user("42", json!({}));
    let refusal = (401, "token audience wrong");
    assert_refused(
        server,
        "the default audience",
        LOBBY,
        &[bearer(&default)],
        &default,
        refusal,
    )
    .await;
}

/// An `exp` far in the future is a session that does not end: not a dropped connection.
pub async fn a_far_future_exp_is_a_long_session(server: &impl Endpoint) {
    for exp in [json!(10_000_000_000_000_000_000u64), json!(u64::MAX)] {
        let token = user("42", json!({ "exp": exp }));
        let request = super::upgrade_request(LOBBY, &[bearer(&token)]);
        let mut connection = Connection::open(server.addr()).await;
        connection.send(request.as_bytes()).await;
        // A server that drops the connection instead of answering fails here.
        let head = connection.head().await;
        assert_eq!(head.status, 101, "exp {exp}: {head:?}");
        let mut client = join(server, LOBBY, &[bearer(&token)]).await;
        send_chat(&mut client, "forever").await;
        expect_chat(&mut client, "forever", Some(&json!({ "id": "42" }))).await;
    }
}

/// Tokens in the URL are not read: proxies log URLs.
pub async fn a_token_in_the_url_is_not_read(server: &impl Endpoint) {
    let token = user("42", json!({}));
    for query in ["token", "access_token", "jwt"] {
        let path = format!("{LOBBY}?{query}={token}");
        assert_refused(server, query, &path, &[], &token, (401, "token required")).await;
    }
    let basic = ("Authorization", format!("Basic {token}"));
    let what = "another scheme";
    assert_refused(
        server,
        what,
        LOBBY,
        &[basic],
        &token,
        (401, "token required"),
    )
    .await;
}

/// Optional mode: anonymous clients chat with no `user`; a sent token must still be valid.
pub async fn optional_mode_lets_anonymous_clients_in(server: &impl Endpoint) {
    let room = "/ws/chat/optional/";
    let mut anonymous = join(server, room, &[]).await;
    let ada = user("42", json!({ "name": "Ada" }));
    let mut named = join(server, room, &[bearer(&ada)]).await;
    send_chat(&mut anonymous, "who am I").await;
    for client in [&mut anonymous, &mut named] {
        expect_chat(client, "who am I", None).await;
    }
    send_chat(&mut named, "Ada here").await;
    let ada_user = json!({ "id": "42", "name": "Ada" });
    for client in [&mut anonymous, &mut named] {
        expect_chat(client, "Ada here", Some(&ada_user)).await;
    }
    let expired = user("42", json!({ "exp": now() - 3600 }));
    let what = "an expired token";
    let refusal = (401, "token expired");
    assert_refused(server, what, room, &[bearer(&expired)], &expired, refusal).await;
    let narrow = user("42", json!({ "rooms": ["lobby"] }));
    let refusal = (403, "room not granted by the token");
    let what = "a room not granted";
    assert_refused(server, what, room, &[bearer(&narrow)], &narrow, refusal).await;
}

/// Off mode: tokens, valid or not, are ignored and nobody is named.
pub async fn off_mode_ignores_tokens(server: &impl Endpoint) {
    let room = "/ws/chat/off/";
    let valid = user("42", json!({ "name": "Ada", "rooms": ["elsewhere"] }));
    let expired = user("42", json!({ "exp": now() - 3600 }));
    let mut clients = [
        join(server, room, &[]).await,
        join(server, room, &[bearer(&valid), extended()]).await,
        join(server, room, &[bearer("garbage")]).await,
        join(server, room, &[bearer(&expired)]).await,
    ];
    super::welcome(&mut clients[1]).await;
    send_chat(&mut clients[1], "no names here").await;
    for client in clients.iter_mut() {
        expect_chat(client, "no names here", None).await;
    }
}

#[tokio::test]
async fn required_mode_refuses_every_broken_rule_with_401() {
    every_broken_rule_is_a_401_naming_it(&required_server()).await;
}

#[tokio::test]
async fn tokens_just_inside_the_rules_are_accepted() {
    tokens_at_the_edges_of_the_rules_are_welcome(&required_server()).await;
}

#[tokio::test]
async fn a_configured_audience_is_the_one_tokens_must_name() {
    let mut env = required_env();
    env.push(("ROOMCAST_AUTH_AUDIENCE", "chat.example.com"));
    a_configured_audience_replaces_the_default(&InProcess::start(&env)).await;
}

#[tokio::test]
async fn a_token_with_a_far_future_exp_gets_a_working_session() {
    a_far_future_exp_is_a_long_session(&required_server()).await;
}

#[tokio::test]
async fn tokens_are_never_read_from_the_url() {
    a_token_in_the_url_is_not_read(&required_server()).await;
}

#[tokio::test]
async fn optional_mode_welcomes_anonymous_clients_and_checks_tokens() {
    let server = InProcess::start(&env_with_mode("optional"));
    optional_mode_lets_anonymous_clients_in(&server).await;
}

#[tokio::test]
async fn off_mode_does_not_look_at_tokens() {
    let server = InProcess::start(&env_with_mode("off"));
    off_mode_ignores_tokens(&server).await;
}
