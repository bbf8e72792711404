//! The publish API on the Redis broker, two instances on one real `redis-server`: a post on
//! one reaches members on both, an `Idempotency-Key` holds across instances, and the API
//! answers 503 with `Retry-After` while Redis is away.
//!
//! Needs `redis-server`; without it the tests are skipped, or fail when `CI` is set.

use serde_json::json;
use testkit::redis::RedisServer;
use testkit::{Endpoint, InProcess};

use super::api::{accepted, assert_api_error, member, post};
use super::expect_chat;
use super::required_env;

/// [`required_env`] on `redis`.
pub fn redis_env(redis: &RedisServer) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = required_env()
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    env.push(("ROOMCAST_REDIS_URL".into(), redis.url()));
    env
}

async fn instance(redis: &RedisServer) -> InProcess {
    let env = redis_env(redis);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = InProcess::start(&env);
    server.wait_metric("roomcast_ready", 1).await;
    server
}

/// Posts through either instance reach the members of both, in one order.
pub async fn a_post_reaches_members_on_every_instance(a: &impl Endpoint, b: &impl Endpoint) {
    let room = "cross";
    let (mut on_a, _) = member(a, room).await;
    let (mut on_b, _) = member(b, room).await;
    a.wait_metric("roomcast_rooms", 1).await;
    b.wait_metric("roomcast_rooms", 1).await;
    let bot = json!({ "id": "bot", "name": "Bot" });
    for (via, message) in [(0, "via a"), (1, "via b")] {
        let body = json!({ "message": message, "user": bot });
        let response = if via == 0 {
            post(a, room, &body, &[]).await
        } else {
            post(b, room, &body, &[]).await
        };
        let (seq, _) = accepted(&response);
        for client in [&mut on_a, &mut on_b] {
            assert_eq!(expect_chat(client, message, Some(&bot)).await["seq"], seq);
        }
    }
}

/// A retry sent to the other instance is recognised: one message, one seq.
pub async fn an_idempotency_key_holds_across_instances(a: &impl Endpoint, b: &impl Endpoint) {
    let room = "orders";
    let (mut on_a, _) = member(a, room).await;
    let (mut on_b, _) = member(b, room).await;
    a.wait_metric("roomcast_rooms", 1).await;
    b.wait_metric("roomcast_rooms", 1).await;
    let key = [("Idempotency-Key", "invoice-9".to_string())];
    let body = json!({ "message": "invoice 9 paid", "user": { "id": "billing" } });
    let first = accepted(&post(a, room, &body, &key).await);
    let retried = accepted(&post(b, room, &body, &key).await);
    let again = accepted(&post(a, room, &body, &key).await);
    assert_eq!(
        retried, first,
        "a retry on the other instance answers the first seq"
    );
    assert_eq!(again, first, "and so does a second retry");
    let (next, _) = accepted(&post(b, room, &json!({ "message": "next" }), &[]).await);
    assert_eq!(next, first.0 + 1, "the retries published nothing");
    let billing = json!({ "id": "billing" });
    for client in [&mut on_a, &mut on_b] {
        let frame = expect_chat(client, "invoice 9 paid", Some(&billing)).await;
        assert_eq!(frame["seq"], first.0);
        assert_eq!(expect_chat(client, "next", None).await["seq"], next);
    }
}

/// While Redis is away a post is 503 with `Retry-After`; once it is back, posts go through.
pub async fn a_post_while_redis_is_away_is_503(server: &impl Endpoint, redis: &mut RedisServer) {
    redis.stop();
    server.wait_metric("roomcast_broker_up", 0).await;
    let response = post(server, "away", &json!({ "message": "lost?" }), &[]).await;
    assert_eq!(response.header("retry-after"), Some("1"), "{response:?}");
    assert_api_error(&response, 503, "redis away");
    redis.restart();
    server.wait_metric("roomcast_broker_up", 1).await;
    accepted(&post(server, "away", &json!({ "message": "back" }), &[]).await);
}

#[tokio::test]
async fn a_post_on_one_instance_reaches_members_on_both() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    a_post_reaches_members_on_every_instance(&a, &b).await;
}

#[tokio::test]
async fn an_idempotency_key_publishes_once_across_instances() {
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let (a, b) = (instance(&redis).await, instance(&redis).await);
    an_idempotency_key_holds_across_instances(&a, &b).await;
}

#[tokio::test]
async fn the_api_answers_503_while_redis_is_away() {
    if !RedisServer::available() {
        return;
    }
    let mut redis = RedisServer::start();
    let server = instance(&redis).await;
    a_post_while_redis_is_away_is_503(&server, &mut redis).await;
}
