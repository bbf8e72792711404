//! Every refusal of the publish API, one status at a time: 400, 401, 403, 404, 405, 411,
//! 413, 415 and 429, each a JSON `{"error"}` that never repeats the key, with nothing
//! published. (503 needs Redis: see [api_redis](super::api_redis).)

use serde_json::json;
use testkit::http::{self, Response};
use testkit::{Endpoint, InProcess};

use super::api::{
    accepted, api_headers, assert_api_error, member, messages_path, post, post_request,
};
use super::{expect_chat, required_env, required_server};

/// Sends `body` to `path` with `headers` as they are.
async fn send(
    server: &impl Endpoint,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> Response {
    http::exchange(server.addr(), post_request(path, headers, body).as_bytes()).await
}

/// The standard headers with `name` replaced by `value`, or removed when `value` is `None`.
fn headers_with(body: &str, name: &str, value: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers: Vec<_> = api_headers(body)
        .into_iter()
        .filter(|(existing, _)| !existing.eq_ignore_ascii_case(name))
        .collect();
    if let Some(value) = value {
        let name = match name {
            "Authorization" => "Authorization",
            "Content-Type" => "Content-Type",
            "Content-Length" => "Content-Length",
            "Transfer-Encoding" => "Transfer-Encoding",
            "Origin" => "Origin",
            other => panic!("no header {other} here"),
        };
        headers.push((name, value.to_string()));
    }
    headers
}

/// After the refusals, the next good post is the room's first message.
async fn nothing_was_published(server: &impl Endpoint, room: &str) {
    let (mut member, _) = member(server, room).await;
    let (seq, _) = accepted(&post(server, room, &json!({ "message": "good" }), &[]).await);
    let frame = expect_chat(&mut member, "good", None).await;
    assert_eq!(frame["seq"], seq);
}

pub async fn bad_bodies_and_keys_are_400(server: &impl Endpoint) {
    let path = messages_path("refusals");
    let (_member, _) = member(server, "refusals").await;
    for body in [
        "not json",
        "[\"message\"]",
        "{}",
        r#"{"message": 3}"#,
        r#"{"message": null}"#,
        r#"{"message": "x", "user": "root"}"#,
        r#"{"message": "x", "user": {"name": "no id"}}"#,
        r#"{"message": "x", "user": {"id": ""}}"#,
        r#"{"message": "x", "user": {"id": 42}}"#,
        &json!({ "message": "x", "user": { "id": "a", "name": "n".repeat(65) } }).to_string(),
        &json!({ "message": "x", "user": { "id": "u".repeat(257) } }).to_string(),
    ] {
        let response = send(server, &path, &api_headers(body), body).await;
        assert_api_error(&response, 400, body);
    }
    let body = json!({ "message": "x" }).to_string();
    for key in ["k".repeat(129), "two words".into(), "clé".into()] {
        let mut headers = api_headers(&body);
        headers.push(("Idempotency-Key", key.clone()));
        let response = send(server, &path, &headers, &body).await;
        assert_api_error(&response, 400, &format!("Idempotency-Key {key:?}"));
    }
    nothing_was_published(server, "refusals").await;
}

pub async fn a_wrong_or_missing_key_is_401(server: &impl Endpoint) {
    let path = messages_path("refusals");
    let body = json!({ "message": "x" }).to_string();
    let user_token = super::tokens::user("42", json!({}));
    let wrong_keys = [
        None,
        Some(format!("Bearer {}", &super::API_KEY[1..])),
        Some(format!("Bearer {}x", super::API_KEY)),
        Some(format!("Basic {}", super::API_KEY)),
        Some(super::API_KEY.to_string()),
        Some(format!("Bearer {user_token}")),
        Some(format!("Bearer{}", super::API_KEY)),
    ];
    for authorization in wrong_keys {
        let headers = headers_with(&body, "Authorization", authorization.as_deref());
        let response = send(server, &path, &headers, &body).await;
        let challenge = response.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{response:?}");
        assert!(!response.text().contains(&user_token[..40]), "{response:?}");
        assert_api_error(&response, 401, &format!("{authorization:?}"));
    }
}

/// The scheme name is case-insensitive (RFC 9110 11.1).
pub async fn the_bearer_scheme_in_any_case_is_accepted(server: &impl Endpoint) {
    let body = json!({ "message": "cased" }).to_string();
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let authorization = format!("{scheme} {}", super::API_KEY);
        let headers = headers_with(&body, "Authorization", Some(&authorization));
        accepted(&send(server, &messages_path("cased"), &headers, &body).await);
    }
}

pub async fn a_browser_origin_is_403(server: &impl Endpoint) {
    let body = json!({ "message": "x" }).to_string();
    for origin in ["https://evil.example", "http://test", "null"] {
        let headers = headers_with(&body, "Origin", Some(origin));
        let response = send(server, &messages_path("refusals"), &headers, &body).await;
        assert_api_error(&response, 403, origin);
    }
}

pub async fn bad_rooms_and_paths_are_404(server: &impl Endpoint) {
    let body = json!({ "message": "x" }).to_string();
    let long = "r".repeat(101);
    for path in [
        messages_path("bad%20room"),
        messages_path(&long),
        messages_path(""),
        "/api/rooms/lobby/message".into(),
        "/api/rooms/lobby".into(),
        "/api/nope".into(),
    ] {
        let response = send(server, &path, &api_headers(&body), &body).await;
        assert_api_error(&response, 404, &path);
    }
}

pub async fn other_methods_are_405(server: &impl Endpoint) {
    let path = messages_path("refusals");
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let request = post_request(&path, &api_headers(""), "").replacen("POST", method, 1);
        let response = http::exchange(server.addr(), request.as_bytes()).await;
        assert_eq!(response.header("allow"), Some("POST"), "{response:?}");
        assert_api_error(&response, 405, method);
    }
}

pub async fn a_body_without_a_length_is_411(server: &impl Endpoint) {
    let path = messages_path("refusals");
    let body = json!({ "message": "x" }).to_string();
    let without = headers_with(&body, "Content-Length", None);
    assert_api_error(
        &send(server, &path, &without, &body).await,
        411,
        "no length",
    );
    let chunk = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let chunked = headers_with(&body, "Content-Length", None)
        .into_iter()
        .chain([("Transfer-Encoding", "chunked".to_string())])
        .collect::<Vec<_>>();
    assert_api_error(&send(server, &path, &chunked, &chunk).await, 411, "chunked");
    let not_a_number = headers_with(&body, "Content-Length", Some("lots"));
    assert_api_error(
        &send(server, &path, &not_a_number, &body).await,
        411,
        "lots",
    );
}

pub async fn a_body_that_is_not_json_typed_is_415(server: &impl Endpoint) {
    let path = messages_path("refusals");
    let body = json!({ "message": "x" }).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let headers = headers_with(&body, "Content-Type", content_type);
        let response = send(server, &path, &headers, &body).await;
        assert_api_error(&response, 415, &format!("{content_type:?}"));
    }
    let with_charset = headers_with(
        &body,
        "Content-Type",
        Some("Application/JSON; charset=utf-8"),
    );
    accepted(&send(server, &path, &with_charset, &body).await);
}

/// A server whose messages are at most 1 KiB: API bodies up to 2 KiB.
pub fn small_messages_env() -> Vec<(&'static str, &'static str)> {
    let mut env = required_env();
    env.push(("ROOMCAST_MAX_MESSAGE_BYTES", "1024"));
    env
}

/// On [`small_messages_env`]: a body up to the bound is taken, one byte more is 413.
pub async fn a_body_over_the_bound_is_413(server: &impl Endpoint) {
    let path = messages_path("large");
    let bound = 1024 + 1024;
    let fill = |length: usize| {
        let body = json!({ "message": "" }).to_string();
        json!({ "message": "m".repeat(length - body.len()) }).to_string()
    };
    let (_member, _) = member(server, "large").await;
    let at_bound = fill(bound);
    assert_eq!(at_bound.len(), bound);
    accepted(&send(server, &path, &api_headers(&at_bound), &at_bound).await);
    let over = fill(bound + 1);
    let response = send(server, &path, &api_headers(&over), &over).await;
    assert_api_error(&response, 413, "one byte over");
}

/// A server that takes one post a second per address, two at once.
pub fn slow_rate_env() -> Vec<(&'static str, &'static str)> {
    let mut env: Vec<_> = required_env()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("ROOMCAST_UPGRADE_"))
        .collect();
    env.extend([
        ("ROOMCAST_UPGRADE_RATE", "1"),
        ("ROOMCAST_UPGRADE_BURST", "2"),
    ]);
    env
}

/// On [`slow_rate_env`]: a backend with the key posts far past the address's upgrade rate;
/// calls refused for a wrong key count against it, and the third at once is 429 with a
/// Retry-After.
pub async fn posts_over_the_rate_are_429(server: &impl Endpoint) {
    let body = json!({ "message": "burst" });
    for _ in 0..10 {
        accepted(&post(server, "rated", &body, &[]).await);
    }
    let text = body.to_string();
    let wrong = headers_with(&text, "Authorization", Some("Bearer not-the-key"));
    let path = messages_path("rated");
    for _ in 0..2 {
        let refused = send(server, &path, &wrong, &text).await;
        assert_api_error(&refused, 401, "a wrong key");
    }
    let response = send(server, &path, &wrong, &text).await;
    assert_eq!(response.status, 429, "{response:?}");
    let retry_after: u64 = response
        .header("retry-after")
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("a Retry-After in seconds: {response:?}"));
    assert!((1..=2).contains(&retry_after), "{response:?}");
    assert_api_error(&response, 429, "over the rate");
}

#[tokio::test]
async fn a_bad_body_or_idempotency_key_is_400() {
    bad_bodies_and_keys_are_400(&required_server()).await;
}

#[tokio::test]
async fn the_bearer_scheme_is_read_in_any_case() {
    the_bearer_scheme_in_any_case_is_accepted(&required_server()).await;
}

#[tokio::test]
async fn a_wrong_or_missing_api_key_is_401() {
    a_wrong_or_missing_key_is_401(&required_server()).await;
}

#[tokio::test]
async fn a_request_with_an_origin_is_403() {
    a_browser_origin_is_403(&required_server()).await;
}

#[tokio::test]
async fn a_bad_room_name_or_path_is_404() {
    bad_rooms_and_paths_are_404(&required_server()).await;
}

#[tokio::test]
async fn methods_other_than_post_are_405() {
    other_methods_are_405(&required_server()).await;
}

#[tokio::test]
async fn a_missing_length_or_a_chunked_body_is_411() {
    a_body_without_a_length_is_411(&required_server()).await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    a_body_that_is_not_json_typed_is_415(&required_server()).await;
}

#[tokio::test]
async fn a_body_over_the_message_bound_is_413() {
    a_body_over_the_bound_is_413(&InProcess::start(&small_messages_env())).await;
}

#[tokio::test]
async fn a_backend_is_not_held_to_the_address_rate_but_refused_calls_are() {
    posts_over_the_rate_are_429(&InProcess::start(&slow_rate_env())).await;
}
