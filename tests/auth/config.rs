//! Bad auth configuration stops the binary with exit status 64 and one line naming the
//! variable, and never shows a secret's value, not even when another variable is the bad one.

use std::process::Output;

use testkit::Roomcast;

use super::{API_KEY, SECRET};

/// 31 bytes: one short of what HS256 needs.
const SHORT_SECRET: &str = "short-secret-value-31-bytes-xyz";

fn run(env: &[(&str, &str)]) -> Output {
    Roomcast::debug().envs(env).run_to_exit().0
}

/// Exit 64 and one `bad configuration` line naming `variable`, with none of `secrets` in
/// anything the process wrote.
fn assert_refused(env: &[(&str, &str)], variable: &str, secrets: &[&str]) {
    let output = run(env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(64), "{env:?}: {stderr}");
    let line = format!("roomcast: bad configuration: {variable}:");
    assert!(stderr.starts_with(&line), "{env:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    for secret in secrets {
        for shown in [&stderr, &stdout] {
            assert!(
                !shown.contains(secret),
                "{variable}: the value is shown: {shown}"
            );
            // Not even a recognisable part of it.
            assert!(
                !shown.contains(&secret[..12]),
                "{variable}: part is shown: {shown}"
            );
        }
    }
}

#[test]
fn auth_without_a_secret_exits_64() {
    for mode in ["required", "optional"] {
        assert_refused(&[("ROOMCAST_AUTH", mode)], "ROOMCAST_AUTH_SECRET", &[]);
    }
}

#[test]
fn a_short_secret_exits_64_without_showing_it() {
    let env = [
        ("ROOMCAST_AUTH", "required"),
        ("ROOMCAST_AUTH_SECRET", SHORT_SECRET),
    ];
    assert_refused(&env, "ROOMCAST_AUTH_SECRET", &[SHORT_SECRET]);
    let env = [
        ("ROOMCAST_AUTH", "required"),
        ("ROOMCAST_AUTH_SECRET", SECRET),
        ("ROOMCAST_AUTH_PREVIOUS_SECRET", SHORT_SECRET),
    ];
    assert_refused(
        &env,
        "ROOMCAST_AUTH_PREVIOUS_SECRET",
        &[SHORT_SECRET, SECRET],
    );
    let env = [("ROOMCAST_API_KEY", SHORT_SECRET)];
    assert_refused(&env, "ROOMCAST_API_KEY", &[SHORT_SECRET]);
}

#[test]
fn a_previous_secret_needs_a_current_one() {
    let env = [("ROOMCAST_AUTH_PREVIOUS_SECRET", SECRET)];
    assert_refused(&env, "ROOMCAST_AUTH_SECRET", &[SECRET]);
}

#[test]
fn other_bad_values_name_their_variable_and_show_no_secret() {
    let secrets = [
        ("ROOMCAST_AUTH_SECRET", SECRET),
        ("ROOMCAST_API_KEY", API_KEY),
    ];
    for (variable, value) in [
        ("ROOMCAST_AUTH", "yes"),
        ("ROOMCAST_AUTH_COOKIE", "bad;name"),
        ("ROOMCAST_LOG", "loud"),
    ] {
        let mut env = secrets.to_vec();
        env.push((variable, value));
        assert_refused(&env, variable, &[SECRET, API_KEY]);
    }
}
