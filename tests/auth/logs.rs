//! No log line shows a token or a secret: every scenario of this suite runs again on the
//! binary with `ROOMCAST_LOG=debug`, and every line it writes is searched for every token
//! minted in this process (whole, by signature, or as a JWT segment) and for the secrets.
//!
//! A scenario that fails its own assertions here is reported by its own test; this one only
//! reads the logs.

use std::sync::Arc;

use testkit::redis::RedisServer;
use testkit::{Endpoint, Roomcast, Server};

use super::api_redis::redis_env;
use super::rotation::env_after_rotation;
use super::tokens::{self, signature_of};
use super::{API_KEY, PREVIOUS_SECRET, SECRET};
use super::{
    api, api_redis, api_refusals, env_with_mode, expiry, grants, refusals, required_env, rotation,
    senders,
};

fn debug_server(env: &[(&str, &str)]) -> Arc<Server> {
    Arc::new(
        Roomcast::debug()
            .envs(env)
            .env("ROOMCAST_LOG", "debug")
            .start(),
    )
}

/// Runs each scenario on `server` as a task of its own: a failed assertion is noted, and the
/// run goes on.
macro_rules! run_all {
    ($server:expr, $failed:expr; $($scenario:path),+ $(,)?) => {
        $(
            let server = Arc::clone(&$server);
            if tokio::spawn(async move { $scenario(&*server).await }).await.is_err() {
                $failed.push(stringify!($scenario));
            }
        )+
    };
}

/// Parts of `secret` long enough that finding one in a log means the secret leaked.
fn pieces(secret: &str) -> [&str; 2] {
    [&secret[..16], &secret[secret.len() - 16..]]
}

#[tokio::test]
async fn no_log_line_contains_a_token_or_a_secret() {
    let mut lines = Vec::new();
    let mut failed: Vec<&str> = Vec::new();

    let required = debug_server(&required_env());
    run_all!(required, failed;
        refusals::every_broken_rule_is_a_401_naming_it,
        refusals::tokens_at_the_edges_of_the_rules_are_welcome,
        refusals::a_token_in_the_url_is_not_read,
        refusals::a_far_future_exp_is_a_long_session,
        grants::rooms_not_granted_are_403,
        grants::posting_where_not_granted_is_refused,
        grants::publish_grants_follow_the_same_patterns,
        senders::frames_name_their_sender,
        senders::a_client_cannot_claim_another_user,
        senders::the_subprotocol_carries_a_token_and_is_not_echoed,
        senders::transports_are_read_in_order,
        rotation::both_secrets_verify_during_a_rotation,
        api::a_post_reaches_the_room,
        api::posts_share_a_kept_alive_connection,
        api::a_post_to_an_empty_room_is_numbered_and_kept_nowhere,
        api_refusals::bad_bodies_and_keys_are_400,
        api_refusals::a_wrong_or_missing_key_is_401,
        api_refusals::a_browser_origin_is_403,
        api_refusals::bad_rooms_and_paths_are_404,
        api_refusals::other_methods_are_405,
        api_refusals::a_body_without_a_length_is_411,
        api_refusals::a_body_that_is_not_json_typed_is_415,
    );
    {
        let server = Arc::clone(&required);
        let cookie = tokio::spawn(async move {
            senders::a_cookie_carries_a_token(&*server, "roomcast_token").await;
            api::a_retried_post_publishes_once(&*server, "orders").await;
        });
        if cookie.await.is_err() {
            failed.push("cookie and idempotency");
        }
    }
    // The expiry scenarios wait for clocks: side by side, in rooms of their own.
    let expiring = [
        tokio::spawn(expiry_scenario(Arc::clone(&required), 0)),
        tokio::spawn(expiry_scenario(Arc::clone(&required), 1)),
        tokio::spawn(expiry_scenario(Arc::clone(&required), 2)),
        tokio::spawn(expiry_scenario(Arc::clone(&required), 3)),
    ];
    for (index, scenario) in expiring.into_iter().enumerate() {
        if scenario.await.is_err() {
            failed.push(["expiry 4001", "refresh", "refused refresh", "plain refresh"][index]);
        }
    }
    lines.extend(required.logs());

    let optional = debug_server(&env_with_mode("optional"));
    run_all!(optional, failed;
        refusals::optional_mode_lets_anonymous_clients_in,
        senders::an_anonymous_client_stays_anonymous,
    );
    lines.extend(optional.logs());
    let off = debug_server(&env_with_mode("off"));
    run_all!(off, failed; refusals::off_mode_ignores_tokens);
    lines.extend(off.logs());
    let mut audience_env = required_env();
    audience_env.push(("ROOMCAST_AUTH_AUDIENCE", "chat.example.com"));
    let audience = debug_server(&audience_env);
    run_all!(audience, failed; refusals::a_configured_audience_replaces_the_default);
    lines.extend(audience.logs());
    let rotated = debug_server(&env_after_rotation());
    run_all!(rotated, failed; rotation::the_previous_secret_is_refused_once_removed);
    lines.extend(rotated.logs());
    let small = debug_server(&api_refusals::small_messages_env());
    run_all!(small, failed; api_refusals::a_body_over_the_bound_is_413);
    lines.extend(small.logs());
    let slow = debug_server(&api_refusals::slow_rate_env());
    run_all!(slow, failed; api_refusals::posts_over_the_rate_are_429);
    lines.extend(slow.logs());

    if RedisServer::available() {
        let mut redis = RedisServer::start();
        let env = redis_env(&redis);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (a, b) = (debug_server(&env), debug_server(&env));
        for server in [&a, &b] {
            server.wait_metric("roomcast_ready", 1).await;
        }
        api_redis::a_post_reaches_members_on_every_instance(&*a, &*b).await;
        api_redis::an_idempotency_key_holds_across_instances(&*a, &*b).await;
        api_redis::a_post_while_redis_is_away_is_503(&*a, &mut redis).await;
        lines.extend(a.logs());
        lines.extend(b.logs());
    }

    if !failed.is_empty() {
        eprintln!("scenarios that failed their own checks (see their tests): {failed:?}");
    }
    assert!(
        lines.iter().any(|line| line.contains(r#""level":"debug""#)),
        "debug lines were written: {lines:?}"
    );
    assert!(
        lines.iter().any(|line| line.contains("token expired")),
        "the expiry closes were logged: {lines:?}"
    );
    let minted = tokens::minted();
    assert!(minted.len() > 50, "only {} tokens minted", minted.len());
    for line in &lines {
        // "eyJ" is how `{"` starts in base64: a JWT header or claims, whole or cut short.
        assert!(
            !line.contains("eyJ"),
            "a log line shows a JWT segment: {line}"
        );
        for token in &minted {
            let signature = signature_of(token);
            let shown = line.contains(token.as_str())
                || (signature.len() >= 16 && line.contains(&signature[..16]));
            assert!(!shown, "a log line shows a token: {line}");
        }
        for secret in [SECRET, PREVIOUS_SECRET, API_KEY] {
            for piece in pieces(secret) {
                assert!(!line.contains(piece), "a log line shows a secret: {line}");
            }
        }
    }
}

async fn expiry_scenario(server: Arc<Server>, which: usize) {
    match which {
        0 => expiry::an_expired_session_is_closed_with_4001(&*server).await,
        1 => expiry::a_refresh_keeps_the_session_open(&*server).await,
        2 => expiry::a_refused_refresh_leaves_the_expiry(&*server).await,
        _ => expiry::a_plain_client_cannot_refresh(&*server).await,
    }
}
