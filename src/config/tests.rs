//! Reading the configuration: defaults, every kind of value, and errors that name their variable.

use super::*;
use std::collections::HashMap;

fn config_from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|name| map.get(name).cloned())
}

#[test]
fn defaults_when_nothing_is_set() {
    let config = config_from(&[]).unwrap();
    assert_eq!(config.addr.to_string(), "0.0.0.0:8000");
    assert!(config.redis.is_none());
    assert!(config.allowed_origins.is_empty());
}

#[test]
fn reads_every_kind_of_value() {
    let config = config_from(&[
        (ENV_ADDR, "127.0.0.1:9000"),
        (ENV_REDIS_URL_FALLBACK, "redis://127.0.0.1:6379"),
        (ENV_DRAIN_DEADLINE_MS, "2500"),
        (ENV_ALLOWED_ORIGINS, "https://a.example, https://b.example"),
        (ENV_LOG, "warn"),
        (ENV_ECHO, "1"),
    ])
    .unwrap();
    assert_eq!(config.addr.port(), 9000);
    let redis = config.redis.unwrap();
    assert_eq!(
        redis.get_connection_info().addr().to_string(),
        "127.0.0.1:6379"
    );
    assert_eq!(config.drain_deadline, Duration::from_millis(2500));
    assert_eq!(
        config.allowed_origins,
        vec!["https://a.example", "https://b.example"]
    );
    assert_eq!(config.log_level, LogLevel::Warn);
    assert!(config.echo);
}

#[test]
fn prefixed_redis_url_wins_over_the_plain_one() {
    let config = config_from(&[
        (ENV_REDIS_URL, "redis://primary:6379"),
        (ENV_REDIS_URL_FALLBACK, "redis://other:6379"),
    ])
    .unwrap();
    let redis = config.redis.unwrap();
    assert_eq!(
        redis.get_connection_info().addr().to_string(),
        "primary:6379"
    );
}

#[test]
fn cluster_seeds_are_listed_instead_of_a_url() {
    let config =
        config_from(&[(ENV_REDIS_CLUSTER, "redis://a:7000, redis://:pw@b:7001,")]).unwrap();
    let seeds: Vec<String> = config
        .redis_cluster
        .iter()
        .map(|seed| seed.get_connection_info().addr().to_string())
        .collect();
    assert_eq!(seeds, ["a:7000", "b:7001"]);
    assert!(config.redis.is_none());
    let bad = config_from(&[(ENV_REDIS_CLUSTER, "redis://a:7000,http://:secret@b")]).unwrap_err();
    assert_eq!(bad.variable, ENV_REDIS_CLUSTER);
    assert!(bad.reason.contains("seed 2") && !bad.reason.contains("secret"));
    let both = [
        (ENV_REDIS_CLUSTER, "redis://a:7000"),
        (ENV_REDIS_URL, "redis://b:6379"),
    ];
    assert_eq!(config_from(&both).unwrap_err().variable, ENV_REDIS_CLUSTER);
}

#[test]
fn bad_values_name_their_variable() {
    for (name, value) in [
        (ENV_ADDR, "nowhere"),
        (ENV_MAX_CONNECTIONS, "0"),
        (ENV_MAX_CONNECTIONS, "-3"),
        (ENV_HEARTBEAT_MS, "soon"),
        (ENV_LOG, "loud"),
        (ENV_REDIS_URL, "http://x"),
        (ENV_REDIS_URL, "redis://host:notaport"),
    ] {
        let error = config_from(&[(name, value)]).unwrap_err();
        assert_eq!(error.variable, name, "{value}");
        assert!(error.to_string().starts_with(name));
    }
}

#[test]
fn secrets_are_checked_and_never_echoed() {
    let short = config_from(&[(ENV_AUTH, "required"), (ENV_AUTH_SECRET, "hunter2")]).unwrap_err();
    assert_eq!(short.variable, ENV_AUTH_SECRET);
    assert!(!short.to_string().contains("hunter2"), "{short}");
    let missing = config_from(&[(ENV_AUTH, "optional")]).unwrap_err();
    assert_eq!(missing.variable, ENV_AUTH_SECRET);
    let secret = "s".repeat(MIN_SECRET_BYTES);
    let config = config_from(&[(ENV_AUTH, "required"), (ENV_AUTH_SECRET, &secret)]).unwrap();
    assert_eq!(config.auth_secrets.len(), 1);
    assert!(!format!("{config:?}").contains(&secret));
    let key = config_from(&[(ENV_API_KEY, "short")]).unwrap_err();
    assert!(!key.to_string().contains("short"));
}

#[test]
fn trusted_proxies_are_ranges() {
    let config = config_from(&[(ENV_TRUSTED_PROXIES, "10.0.0.0/8, ::1")]).unwrap();
    assert_eq!(config.trusted_proxies.len(), 2);
    let error = config_from(&[(ENV_TRUSTED_PROXIES, "10.0.0.0/8, bad")]).unwrap_err();
    assert_eq!(error.variable, ENV_TRUSTED_PROXIES);
}

#[test]
fn peer_timeout_must_exceed_the_heartbeat() {
    let error =
        config_from(&[(ENV_HEARTBEAT_MS, "1000"), (ENV_PEER_TIMEOUT_MS, "1000")]).unwrap_err();
    assert_eq!(error.variable, ENV_PEER_TIMEOUT_MS);
}
