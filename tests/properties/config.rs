//! The configuration parser on random environments: it never panics; a refusal names one of
//! its variables and starts with that name; no refusal, and no `Debug` of a configuration,
//! repeats the value of a secret (`ROOMCAST_AUTH_SECRET`, its previous one,
//! `ROOMCAST_API_KEY`) or of a Redis URL, which may carry a password.

use std::collections::HashMap;

use proptest::prelude::*;
use roomcast::config::*;

const VARIABLES: &[&str] = &[
    ENV_ADDR,
    ENV_REDIS_URL,
    ENV_REDIS_URL_FALLBACK,
    ENV_WORKERS,
    ENV_SHUTDOWN_DELAY_MS,
    ENV_DRAIN_DEADLINE_MS,
    ENV_HEARTBEAT_MS,
    ENV_PEER_TIMEOUT_MS,
    ENV_HEAD_TIMEOUT_MS,
    ENV_MAX_CONNECTIONS,
    ENV_MAX_MESSAGE_BYTES,
    ENV_SEND_QUEUE,
    ENV_SEND_QUEUE_BYTES,
    ENV_HISTORY,
    ENV_HISTORY_BYTES,
    ENV_HISTORY_BUDGET_BYTES,
    ENV_BACKLOG_BUDGET_BYTES,
    ENV_INBOUND_BUDGET_BYTES,
    ENV_ROOM_TTL_SECS,
    ENV_PUBLISH_QUEUE,
    ENV_PUBLISH_QUEUE_BYTES,
    ENV_ALLOWED_ORIGINS,
    ENV_LOG,
    ENV_ECHO,
    ENV_RATE,
    ENV_BURST,
    ENV_MAX_CONNECTIONS_PER_IP,
    ENV_UPGRADE_RATE,
    ENV_UPGRADE_BURST,
    ENV_TRUSTED_PROXIES,
    ENV_METRICS_ADDR,
    ENV_SOCKET_SEND_BUFFER,
    ENV_AUTH,
    ENV_AUTH_SECRET,
    ENV_AUTH_PREVIOUS_SECRET,
    ENV_AUTH_AUDIENCE,
    ENV_AUTH_COOKIE,
    ENV_TOKEN_URL,
    ENV_API_KEY,
];

const SECRETS: &[&str] = &[ENV_AUTH_SECRET, ENV_AUTH_PREVIOUS_SECRET, ENV_API_KEY];
const URLS: &[&str] = &[ENV_REDIS_URL, ENV_REDIS_URL_FALLBACK];

/// Values of every kind the parser meets: numbers in and out of range, words it knows,
/// addresses, URLs, lists, and arbitrary text.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,4}",
        "[0-9]{5,25}",
        "-[0-9]{1,5}",
        " ?[0-9]{1,3}\\.[0-9]{1,3} ?",
        prop::sample::select(vec![
            "",
            " ",
            "0",
            "1",
            "true",
            "false",
            "off",
            "optional",
            "required",
            "error",
            "warn",
            "info",
            "debug",
            "*",
            "127.0.0.1:0",
            "[::1]:9000",
            "0.0.0.0:99999",
            "redis://127.0.0.1:1/",
            "redis://:pass@host:6379/0",
            "redis+unix:///tmp/r.sock",
            "redis://[::1",
            "http://x",
            "10.0.0.0/8, ::1",
            "fd00::/129",
            "/auth/token",
            "https://a.example",
            "roomcast_token",
            "a b",
        ])
        .prop_map(String::from),
        "redis://[a-z:@/.0-9\\[\\]%?=&]{0,30}",
        "\\PC{0,24}",
        any::<String>(),
    ]
}

/// A secret's value: long or short, but unmistakable in any text it leaks into.
fn secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{1,48}".prop_map(|tail| format!("Secr3t-{tail}"))
}

fn environment() -> impl Strategy<Value = HashMap<String, String>> {
    let plain = prop::collection::hash_map(
        prop::sample::select(VARIABLES.to_vec()).prop_map(String::from),
        value(),
        0..8,
    );
    let secrets = prop::collection::hash_map(
        prop::sample::select(SECRETS.to_vec()).prop_map(String::from),
        secret(),
        0..3,
    );
    let urls = prop::collection::hash_map(
        prop::sample::select(URLS.to_vec()).prop_map(String::from),
        "[a-z+]{2,10}://u:Passw0rd-[a-z0-9]{4,12}@[a-z0-9.:\\[\\]]{0,20}/?[0-9a-z]{0,3}",
        0..2,
    );
    (plain, secrets, urls).prop_map(|(plain, secrets, urls)| {
        let mut environment = plain;
        environment.extend(urls);
        environment.extend(secrets);
        environment
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_environment_is_a_configuration_or_one_named_refusal(environment in environment()) {
        let result = Config::from_lookup(|name| environment.get(name).cloned());
        // The secrets' values, and the password of a Redis URL.
        let hidden: Vec<&str> = environment
            .iter()
            .filter_map(|(name, value)| {
                if SECRETS.contains(&name.as_str()) {
                    value.starts_with("Secr3t-").then_some(value.as_str())
                } else if URLS.contains(&name.as_str()) {
                    let password = value.split_once(":Passw0rd-")?.1;
                    Some(&value[value.len() - password.len() - "Passw0rd-".len()..])
                        .map(|tail| tail.split('@').next().unwrap_or(tail))
                } else {
                    None
                }
            })
            .collect();
        match result {
            Ok(config) => {
                let debug = format!("{config:?}");
                for value in hidden {
                    prop_assert!(!debug.contains(value) || !value.starts_with("Secr3t-"), "Debug shows {}", value);
                }
            }
            Err(error) => {
                prop_assert!(VARIABLES.contains(&error.variable), "{}", error.variable);
                let text = error.to_string();
                prop_assert!(text.starts_with(error.variable), "{}", text);
                prop_assert!(!error.reason.is_empty());
                for value in hidden {
                    prop_assert!(!text.contains(value), "{} repeats {}", text, value);
                }
            }
        }
    }
}
