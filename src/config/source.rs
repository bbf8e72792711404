//! Reading variables: unset or empty means the default; a bad value names its variable.

use std::time::Duration;

use super::{ConfigError, ENV_REDIS_URL, ENV_REDIS_URL_FALLBACK, MIN_SECRET_BYTES};
use crate::auth::Secret;

/// Names whichever Redis URL variable was set, without echoing the URL: it may hold a password.
pub(super) fn bad_redis_url(source: &Source<'_>) -> ConfigError {
    let variable = if source.get(ENV_REDIS_URL).is_some() {
        ENV_REDIS_URL
    } else {
        ENV_REDIS_URL_FALLBACK
    };
    ConfigError {
        variable,
        reason: "expected a URL like redis://host:6379/0".into(),
    }
}

pub(super) struct Source<'a> {
    pub(super) lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Source<'_> {
    /// Cluster seed nodes, `redis://host:port` each, comma-separated; a bad one is named by
    /// its place in the list, not echoed, since it may hold a password.
    pub(super) fn redis_seeds(
        &self,
        name: &'static str,
    ) -> Result<Vec<redis::Client>, ConfigError> {
        let Some(list) = self.get(name) else {
            return Ok(Vec::new());
        };
        let seeds = list
            .split(',')
            .map(str::trim)
            .filter(|seed| !seed.is_empty());
        seeds
            .enumerate()
            .map(|(place, seed)| {
                let client = seed
                    .starts_with("redis://")
                    .then(|| redis::Client::open(seed).ok())
                    .flatten();
                client.ok_or_else(|| ConfigError {
                    variable: name,
                    reason: format!(
                        "seed {} is not a URL like redis://host:6379 (list them comma-separated)",
                        place + 1
                    ),
                })
            })
            .collect()
    }

    /// A set but empty variable counts as unset, as compose writes `VAR=` for blanks.
    pub(super) fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|value| !value.trim().is_empty())
    }

    pub(super) fn parse<T>(
        &self,
        name: &'static str,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(value) => parse(value.trim()).map_err(|reason| ConfigError {
                variable: name,
                reason: format!("{reason} (got {value:?})"),
            }),
        }
    }

    pub(super) fn number(
        &self,
        name: &'static str,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<usize, ConfigError> {
        self.parse(name, default, |v| match v.parse::<usize>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(format!(
                "expected a whole number from {} to {}",
                range.start(),
                range.end()
            )),
        })
    }

    pub(super) fn millis(
        &self,
        name: &'static str,
        default: Duration,
        min: u64,
    ) -> Result<Duration, ConfigError> {
        self.parse(name, default, |v| match v.parse::<u64>() {
            Ok(ms) if ms >= min && ms <= 86_400_000 => Ok(Duration::from_millis(ms)),
            _ => Err(format!("expected milliseconds from {min} to 86400000")),
        })
    }

    /// A secret: checked for length, and never repeated in the error.
    pub(super) fn secret(&self, name: &'static str) -> Result<Option<Secret>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(value) if value.len() >= MIN_SECRET_BYTES => Ok(Some(Secret(value.into_bytes()))),
            Some(_) => Err(ConfigError {
                variable: name,
                reason: format!(
                    "must be at least {MIN_SECRET_BYTES} bytes (the value is not shown)"
                ),
            }),
        }
    }
}
