//! Rotating the signing secret: while `ROOMCAST_AUTH_PREVIOUS_SECRET` is set, tokens signed
//! with it still verify; once it is removed they are refused.

use serde_json::json;
use testkit::ws::send_chat;
use testkit::{Endpoint, InProcess};

use super::tokens::{self, claims, signed};
use super::{SECRET, assert_refused, bearer, expect_chat, join, required_env, required_server};

const PATH: &str = "/ws/chat/rotation/";

/// Both secrets verify during the rotation; any other is refused.
pub async fn both_secrets_verify_during_a_rotation(server: &impl Endpoint) {
    let old = tokens::previous(&claims("old", json!({ "name": "Old" })));
    let new = tokens::token(&claims("new", json!({ "name": "New" })));
    let mut clients = [
        join(server, PATH, &[bearer(&old)]).await,
        join(server, PATH, &[bearer(&new)]).await,
    ];
    for (index, (sender, name)) in [("old", "Old"), ("new", "New")].into_iter().enumerate() {
        send_chat(&mut clients[index], sender).await;
        let user = json!({ "id": sender, "name": name });
        for client in clients.iter_mut() {
            expect_chat(client, sender, Some(&user)).await;
        }
    }
    let header = json!({ "alg": "HS256", "typ": "JWT" });
    let third = signed(
        &header,
        &claims("x", json!({})),
        b"a-third-secret-nobody-configured!!",
    );
    let refusal = (401, "token signature invalid");
    assert_refused(
        server,
        "a third secret",
        PATH,
        &[bearer(&third)],
        &third,
        refusal,
    )
    .await;
}

/// After the rotation only the current secret verifies.
pub async fn the_previous_secret_is_refused_once_removed(server: &impl Endpoint) {
    let old = tokens::previous(&claims("old", json!({})));
    let refusal = (401, "token signature invalid");
    assert_refused(
        server,
        "the previous secret",
        PATH,
        &[bearer(&old)],
        &old,
        refusal,
    )
    .await;
    let new = tokens::token(&claims("new", json!({})));
    let mut client = join(server, PATH, &[bearer(&new)]).await;
    send_chat(&mut client, "still in").await;
    expect_chat(&mut client, "still in", Some(&json!({ "id": "new" }))).await;
}

/// The rotation's last step: the same server without the previous secret.
pub fn env_after_rotation() -> Vec<(&'static str, &'static str)> {
    let env: Vec<_> = required_env()
        .into_iter()
        .filter(|(name, _)| *name != "ROOMCAST_AUTH_PREVIOUS_SECRET")
        .collect();
    assert!(env.contains(&("ROOMCAST_AUTH_SECRET", SECRET)));
    env
}

#[tokio::test]
async fn the_previous_secret_verifies_during_a_rotation() {
    both_secrets_verify_during_a_rotation(&required_server()).await;
}

#[tokio::test]
async fn the_previous_secret_is_refused_after_the_rotation() {
    let server = InProcess::start(&env_after_rotation());
    the_previous_secret_is_refused_once_removed(&server).await;
}
