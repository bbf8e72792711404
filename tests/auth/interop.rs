//! A Python backend against two roomcast instances on one real Redis: `interop.py` mints
//! user tokens with PyJWT and posts with `urllib.request`; this side connects WebSocket
//! clients with those tokens and checks what every member on both instances receives.
//!
//! Needs `redis-server` and a Python with PyJWT: `ROOMCAST_PYTHON`, or the venv `.ci/run`
//! makes (`python3 -m venv target/py-venv && target/py-venv/bin/pip install -r
//! .ci/requirements.txt`). Without them the test is skipped, or fails when `CI` is set.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use testkit::redis::RedisServer;
use testkit::ws::{recv_json, send_chat};
use testkit::{Endpoint, InProcess, paths, skip_or_fail};

use super::api_redis::redis_env;
use super::{API_KEY, SECRET, assert_refused, bearer, expect_chat, extended, join, welcome};

const INSTALL: &str = "python3 -m venv target/py-venv && \
    target/py-venv/bin/pip install -r .ci/requirements.txt (or set ROOMCAST_PYTHON)";

/// The interpreter with PyJWT; `None` after [`skip_or_fail`] when there is none.
fn python() -> Option<PathBuf> {
    let python = match std::env::var("ROOMCAST_PYTHON") {
        Ok(path) if !path.trim().is_empty() => PathBuf::from(path),
        _ => paths::workspace_root().join("target/py-venv/bin/python"),
    };
    if !python.is_file() {
        skip_or_fail(&format!("no Python at {}; {INSTALL}", python.display()));
        return None;
    }
    let has_pyjwt = Command::new(&python)
        .args(["-c", "import jwt"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !has_pyjwt {
        skip_or_fail(&format!("{} has no PyJWT; {INSTALL}", python.display()));
        return None;
    }
    Some(python)
}

/// Runs `interop.py <command>` with `plan` on stdin and the secrets in its environment.
async fn backend(python: &Path, command: &'static str, plan: Value) -> Value {
    let python = python.to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/auth/interop.py");
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(command)
            .env("ROOMCAST_AUTH_SECRET", SECRET)
            .env("ROOMCAST_API_KEY", API_KEY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", python.display()));
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(plan.to_string().as_bytes())
            .expect("write the plan");
        drop(stdin);
        child.wait_with_output().expect("its output")
    })
    .await
    .expect("the backend's thread");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "interop.py {command}: {stderr}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("interop.py {command} printed no JSON: {stderr}"))
}

#[tokio::test]
async fn tokens_from_pyjwt_and_posts_from_urllib_reach_members_on_both_instances() {
    let Some(python) = python() else { return };
    if !RedisServer::available() {
        return;
    }
    let redis = RedisServer::start();
    let env = redis_env(&redis);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (a, b) = (InProcess::start(&env), InProcess::start(&env));
    for server in [&a, &b] {
        server.wait_metric("roomcast_ready", 1).await;
    }

    let minted = backend(
        &python,
        "mint",
        json!({ "users": [
            { "id": "1", "name": "Ada Lovelace", "rooms": ["support-*"] },
            { "id": "2", "name": "Grace Hopper" },
            { "id": "3", "name": "Linus", "rooms": ["support-*"], "publish": [] },
        ] }),
    )
    .await;
    let token = |id: &str| minted["tokens"][id].as_str().expect("a token").to_string();
    let (ada, grace, linus) = (token("1"), token("2"), token("3"));

    let path = "/ws/chat/support-42/";
    let mut members = [
        join(&a, path, &[bearer(&ada), extended()]).await,
        join(&b, path, &[bearer(&grace)]).await,
        join(&a, path, &[bearer(&linus), extended()]).await,
        join(&b, path, &[("Cookie", format!("roomcast_token={ada}"))]).await,
    ];
    welcome(&mut members[0]).await;
    welcome(&mut members[2]).await;
    for server in [&a, &b] {
        server.wait_metric("roomcast_rooms", 1).await;
    }
    let refusal = (403, "room not granted by the token");
    assert_refused(
        &b,
        "ada in sales",
        "/ws/chat/sales/",
        &[bearer(&ada)],
        &ada,
        refusal,
    )
    .await;

    send_chat(&mut members[0], "hello from Ada").await;
    let ada_user = json!({ "id": "1", "name": "Ada Lovelace" });
    for member in members.iter_mut() {
        expect_chat(member, "hello from Ada", Some(&ada_user)).await;
    }
    send_chat(&mut members[2], "Linus may only read").await;
    assert_eq!(recv_json(&mut members[2]).await["code"], "forbidden");

    let helpdesk = json!({ "id": "helpdesk", "name": "Help desk" });
    let posted = backend(
        &python,
        "post",
        json!({
            "bases": [format!("http://{}", a.addr()), format!("http://{}", b.addr())],
            "room": "support-42",
            "posts": [
                { "via": 0, "message": "Ticket 42 resolved", "user": helpdesk,
                  "idempotency_key": "ticket-42-resolved" },
                { "via": 1, "message": "Ticket 42 resolved", "user": helpdesk,
                  "idempotency_key": "ticket-42-resolved" },
                { "via": 1, "message": "Survey sent" },
                { "via": 0, "message": "with a wrong key", "key": "wrong" },
            ],
        }),
    )
    .await;
    let answers = posted["answers"].as_array().expect("answers");
    let status = |index: usize| answers[index]["status"].as_u64();
    let seq = |index: usize| answers[index]["answer"]["seq"].as_u64();
    assert_eq!(
        [status(0), status(1), status(2), status(3)],
        [Some(200), Some(200), Some(200), Some(401)],
        "{posted}"
    );
    assert_eq!(seq(0), Some(2), "after Ada's message: {posted}");
    assert_eq!(
        seq(1),
        seq(0),
        "the retry through the other instance: {posted}"
    );
    assert_eq!(seq(2), Some(3), "{posted}");
    assert!(answers[3]["answer"]["error"].is_string(), "{posted}");
    for member in members.iter_mut() {
        let frame = expect_chat(member, "Ticket 42 resolved", Some(&helpdesk)).await;
        assert_eq!(frame["seq"], 2, "published once: {frame}");
        assert_eq!(expect_chat(member, "Survey sent", None).await["seq"], 3);
    }
}

#[tokio::test]
async fn a_pyjwt_token_with_fractional_times_is_accepted() {
    let Some(python) = python() else { return };
    let server = super::required_server();
    let plan = json!({ "users": [{ "id": "5", "float_times": true }] });
    let minted = backend(&python, "mint", plan).await;
    let token = minted["tokens"]["5"].as_str().expect("a token").to_string();
    let claims = super::tokens::claims_of(&token);
    assert!(
        claims["exp"].is_f64(),
        "PyJWT wrote a fractional exp: {claims}"
    );
    let path = "/ws/chat/float/";
    let request = super::upgrade_request(path, &[bearer(&token)]);
    let answer = testkit::http::exchange(server.addr(), request.as_bytes()).await;
    assert_eq!(
        answer.status,
        101,
        "RFC 7519 NumericDates may have fractions ({claims}): {}",
        answer.text()
    );
    let mut client = join(&server, path, &[bearer(&token)]).await;
    send_chat(&mut client, "float").await;
    expect_chat(&mut client, "float", Some(&json!({ "id": "5" }))).await;
}
