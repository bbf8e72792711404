//! Configuration: every `ROOMCAST_*` variable, parsed once before the runtime starts.

mod cidr;
mod source;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub use cidr::{Cidr, canonical};

use crate::auth::{Mode, Secret};
use source::{Source, bad_redis_url};

pub const ENV_ADDR: &str = "ROOMCAST_ADDR";
pub const ENV_REDIS_URL: &str = "ROOMCAST_REDIS_URL";
/// Accepted when `ROOMCAST_REDIS_URL` is unset: the name most compose files already use.
pub const ENV_REDIS_URL_FALLBACK: &str = "REDIS_URL";
/// Seed nodes of a Redis Cluster, comma-separated; set instead of a Redis URL.
pub const ENV_REDIS_CLUSTER: &str = "ROOMCAST_REDIS_CLUSTER";
pub const ENV_WORKERS: &str = "ROOMCAST_WORKERS";
pub const ENV_SHUTDOWN_DELAY_MS: &str = "ROOMCAST_SHUTDOWN_DELAY_MS";
pub const ENV_DRAIN_DEADLINE_MS: &str = "ROOMCAST_DRAIN_DEADLINE_MS";
pub const ENV_HEARTBEAT_MS: &str = "ROOMCAST_HEARTBEAT_MS";
pub const ENV_PEER_TIMEOUT_MS: &str = "ROOMCAST_PEER_TIMEOUT_MS";
pub const ENV_HEAD_TIMEOUT_MS: &str = "ROOMCAST_HEAD_TIMEOUT_MS";
pub const ENV_MAX_CONNECTIONS: &str = "ROOMCAST_MAX_CONNECTIONS";
pub const ENV_MAX_MESSAGE_BYTES: &str = "ROOMCAST_MAX_MESSAGE_BYTES";
pub const ENV_SEND_QUEUE: &str = "ROOMCAST_SEND_QUEUE";
pub const ENV_SEND_QUEUE_BYTES: &str = "ROOMCAST_SEND_QUEUE_BYTES";
pub const ENV_HISTORY: &str = "ROOMCAST_HISTORY";
pub const ENV_HISTORY_BYTES: &str = "ROOMCAST_HISTORY_BYTES";
pub const ENV_HISTORY_BUDGET_BYTES: &str = "ROOMCAST_HISTORY_BUDGET_BYTES";
pub const ENV_BACKLOG_BUDGET_BYTES: &str = "ROOMCAST_BACKLOG_BUDGET_BYTES";
pub const ENV_INBOUND_BUDGET_BYTES: &str = "ROOMCAST_INBOUND_BUDGET_BYTES";
pub const ENV_ROOM_TTL_SECS: &str = "ROOMCAST_ROOM_TTL_SECS";
pub const ENV_PUBLISH_QUEUE: &str = "ROOMCAST_PUBLISH_QUEUE";
pub const ENV_PUBLISH_QUEUE_BYTES: &str = "ROOMCAST_PUBLISH_QUEUE_BYTES";
pub const ENV_ALLOWED_ORIGINS: &str = "ROOMCAST_ALLOWED_ORIGINS";
pub const ENV_LOG: &str = "ROOMCAST_LOG";
pub const ENV_ECHO: &str = "ROOMCAST_ECHO";
pub const ENV_RATE: &str = "ROOMCAST_RATE";
pub const ENV_BURST: &str = "ROOMCAST_BURST";
pub const ENV_MAX_CONNECTIONS_PER_IP: &str = "ROOMCAST_MAX_CONNECTIONS_PER_IP";
pub const ENV_UPGRADE_RATE: &str = "ROOMCAST_UPGRADE_RATE";
pub const ENV_UPGRADE_BURST: &str = "ROOMCAST_UPGRADE_BURST";
pub const ENV_TRUSTED_PROXIES: &str = "ROOMCAST_TRUSTED_PROXIES";
pub const ENV_METRICS_ADDR: &str = "ROOMCAST_METRICS_ADDR";
pub const ENV_SOCKET_SEND_BUFFER: &str = "ROOMCAST_SOCKET_SEND_BUFFER";
pub const ENV_PRESENCE_LINGER_MS: &str = "ROOMCAST_PRESENCE_LINGER_MS";
pub const ENV_PRESENCE_LIST: &str = "ROOMCAST_PRESENCE_LIST";
pub const ENV_PRESENCE_EVENTS_MAX: &str = "ROOMCAST_PRESENCE_EVENTS_MAX";
pub const ENV_PRESENCE_TTL_MS: &str = "ROOMCAST_PRESENCE_TTL_MS";
pub const ENV_AUTH: &str = "ROOMCAST_AUTH";
pub const ENV_AUTH_SECRET: &str = "ROOMCAST_AUTH_SECRET";
pub const ENV_AUTH_PREVIOUS_SECRET: &str = "ROOMCAST_AUTH_PREVIOUS_SECRET";
pub const ENV_AUTH_AUDIENCE: &str = "ROOMCAST_AUTH_AUDIENCE";
pub const ENV_AUTH_COOKIE: &str = "ROOMCAST_AUTH_COOKIE";
pub const ENV_TOKEN_URL: &str = "ROOMCAST_TOKEN_URL";
pub const ENV_API_KEY: &str = "ROOMCAST_API_KEY";

/// A secret shorter than this is refused: HS256 wants at least its hash size.
pub const MIN_SECRET_BYTES: usize = 32;

/// What a chat frame adds to its message at most: seq, timestamp and the sender's identity.
pub const FRAME_OVERHEAD: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    /// `None` runs the embedded in-process broker. A client holds only the parsed URL; it
    /// connects when the broker starts.
    pub redis: Option<redis::Client>,
    /// Seed nodes of a Redis Cluster; empty unless `ROOMCAST_REDIS_CLUSTER` is set. The
    /// broker learns the other nodes from them.
    pub redis_cluster: Vec<redis::Client>,
    /// Runtime worker threads; 0 means one per core.
    pub workers: usize,
    /// How long `/readyz` answers 503 before the listener closes, so a proxy notices first.
    pub shutdown_delay: Duration,
    pub drain_deadline: Duration,
    pub heartbeat: Duration,
    pub peer_timeout: Duration,
    pub head_timeout: Duration,
    pub max_connections: usize,
    pub max_message_bytes: usize,
    /// Frames queued to one member...
    pub send_queue: usize,
    /// ...and their bytes; past either the member is cut (4008).
    pub send_queue_bytes: usize,
    /// Messages kept per room...
    pub history: usize,
    /// ...and their bytes, per room.
    pub history_bytes: usize,
    /// Every room's history together (embedded broker).
    pub history_budget_bytes: usize,
    /// Frames that only members' feeds still hold; past it the furthest behind are cut.
    pub backlog_budget_bytes: usize,
    /// Large messages being received, together; past it a sender is refused (1013).
    pub inbound_budget_bytes: usize,
    pub room_ttl: Duration,
    /// Publishes held for Redis...
    pub publish_queue: usize,
    /// ...and their bytes.
    pub publish_queue_bytes: usize,
    /// Origins allowed besides the server's own; `*` allows any.
    pub allowed_origins: Vec<String>,
    /// Chat messages a connection may publish per second...
    pub rate: u32,
    /// ...and at once.
    pub burst: u32,
    pub max_connections_per_ip: usize,
    /// WebSocket upgrades an address may make per second...
    pub upgrade_rate: u32,
    /// ...and at once.
    pub upgrade_burst: u32,
    /// Peers whose PROXY header or `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<Cidr>,
    /// Serve `/metrics` here instead of on the public address.
    pub metrics_addr: Option<SocketAddr>,
    /// The kernel's send buffer per connection (SO_SNDBUF); 0 leaves it to the kernel.
    pub socket_send_buffer: usize,
    /// How long a user whose last connection closed stays present: a reconnect within it
    /// is neither a leave nor a join.
    pub presence_linger: Duration,
    /// Users listed in a welcome.
    pub presence_list: usize,
    /// Past this many present, joins and leaves are not announced one by one.
    pub presence_events_max: u64,
    /// Redis: how long a connection stays present without its instance refreshing it, so
    /// how long a crashed instance's members take to leave.
    pub presence_ttl: Duration,
    pub auth: Mode,
    /// The signing secret, then the previous one during a rotation.
    pub auth_secrets: Vec<Secret>,
    pub auth_audience: String,
    /// The cookie a token may come in.
    pub auth_cookie: String,
    /// Where the page fetches a token for its user (with credentials).
    pub token_url: Option<String>,
    /// The bearer key of the publish and presence APIs; unset turns them off.
    pub api_key: Option<Secret>,
    pub log_level: LogLevel,
    pub echo: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([0, 0, 0, 0], 8000)),
            redis: None,
            redis_cluster: Vec::new(),
            workers: 0,
            shutdown_delay: Duration::from_millis(1500),
            drain_deadline: Duration::from_secs(5),
            heartbeat: Duration::from_secs(20),
            peer_timeout: Duration::from_secs(45),
            head_timeout: Duration::from_secs(10),
            max_connections: 5_000,
            max_message_bytes: 64 * 1024,
            send_queue: 256,
            send_queue_bytes: 512 * 1024,
            history: 1000,
            history_bytes: 1024 * 1024,
            history_budget_bytes: 32 * 1024 * 1024,
            backlog_budget_bytes: 16 * 1024 * 1024,
            inbound_budget_bytes: 8 * 1024 * 1024,
            room_ttl: Duration::from_secs(24 * 3600),
            publish_queue: 1024,
            publish_queue_bytes: 8 * 1024 * 1024,
            allowed_origins: Vec::new(),
            rate: 5,
            burst: 20,
            max_connections_per_ip: 256,
            upgrade_rate: 20,
            upgrade_burst: 60,
            trusted_proxies: Vec::new(),
            metrics_addr: None,
            socket_send_buffer: 64 * 1024,
            presence_linger: Duration::from_secs(5),
            presence_list: 100,
            presence_events_max: 1000,
            presence_ttl: Duration::from_secs(60),
            auth: Mode::Off,
            auth_secrets: Vec::new(),
            auth_audience: "roomcast".into(),
            auth_cookie: "roomcast_token".into(),
            token_url: None,
            api_key: None,
            log_level: LogLevel::Info,
            echo: false,
        }
    }
}

/// A bad value in one variable; the process exits with status 64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup`, so tests can pass a map instead of the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let defaults = Config::default();
        let source = Source { lookup: &lookup };
        let config = Config {
            addr: source.parse(ENV_ADDR, defaults.addr, |v| {
                v.parse()
                    .map_err(|_| "expected HOST:PORT, e.g. 0.0.0.0:8000".into())
            })?,
            redis: match source
                .get(ENV_REDIS_URL)
                .or_else(|| source.get(ENV_REDIS_URL_FALLBACK))
            {
                None => None,
                // Parsed here, not at connect time, so a typo stops the process with 64.
                Some(url) if url.starts_with("redis://") || url.starts_with("redis+unix://") => {
                    match redis::Client::open(url.as_str()) {
                        Ok(client) => Some(client),
                        Err(_) => return Err(bad_redis_url(&source)),
                    }
                }
                Some(_) => return Err(bad_redis_url(&source)),
            },
            redis_cluster: source.redis_seeds(ENV_REDIS_CLUSTER)?,
            workers: source.number(ENV_WORKERS, defaults.workers, 0..=256)?,
            shutdown_delay: source.millis(ENV_SHUTDOWN_DELAY_MS, defaults.shutdown_delay, 0)?,
            drain_deadline: source.millis(ENV_DRAIN_DEADLINE_MS, defaults.drain_deadline, 1)?,
            heartbeat: source.millis(ENV_HEARTBEAT_MS, defaults.heartbeat, 10)?,
            peer_timeout: source.millis(ENV_PEER_TIMEOUT_MS, defaults.peer_timeout, 10)?,
            head_timeout: source.millis(ENV_HEAD_TIMEOUT_MS, defaults.head_timeout, 10)?,
            max_connections: source.number(
                ENV_MAX_CONNECTIONS,
                defaults.max_connections,
                1..=1_000_000,
            )?,
            max_message_bytes: source.number(
                ENV_MAX_MESSAGE_BYTES,
                defaults.max_message_bytes,
                16..=64 * 1024 * 1024,
            )?,
            send_queue: source.number(ENV_SEND_QUEUE, defaults.send_queue, 1..=65_536)?,
            send_queue_bytes: source.number(
                ENV_SEND_QUEUE_BYTES,
                defaults.send_queue_bytes,
                1024..=1 << 30,
            )?,
            history: source.number(ENV_HISTORY, defaults.history, 0..=1_000_000)?,
            history_bytes: source.number(ENV_HISTORY_BYTES, defaults.history_bytes, 0..=1 << 30)?,
            history_budget_bytes: source.number(
                ENV_HISTORY_BUDGET_BYTES,
                defaults.history_budget_bytes,
                0..=1 << 40,
            )?,
            backlog_budget_bytes: source.number(
                ENV_BACKLOG_BUDGET_BYTES,
                defaults.backlog_budget_bytes,
                64 * 1024..=1 << 40,
            )?,
            inbound_budget_bytes: source.number(
                ENV_INBOUND_BUDGET_BYTES,
                defaults.inbound_budget_bytes,
                0..=1 << 40,
            )?,
            room_ttl: Duration::from_secs(source.number(
                ENV_ROOM_TTL_SECS,
                defaults.room_ttl.as_secs() as usize,
                1..=365 * 24 * 3600,
            )? as u64),
            publish_queue: source.number(
                ENV_PUBLISH_QUEUE,
                defaults.publish_queue,
                1..=1_000_000,
            )?,
            publish_queue_bytes: source.number(
                ENV_PUBLISH_QUEUE_BYTES,
                defaults.publish_queue_bytes,
                64 * 1024..=1 << 40,
            )?,
            allowed_origins: source.parse(ENV_ALLOWED_ORIGINS, Vec::new(), |v| {
                Ok(v.split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(String::from)
                    .collect())
            })?,
            rate: source.number(ENV_RATE, defaults.rate as usize, 1..=1_000_000)? as u32,
            burst: source.number(ENV_BURST, defaults.burst as usize, 1..=1_000_000)? as u32,
            max_connections_per_ip: source.number(
                ENV_MAX_CONNECTIONS_PER_IP,
                defaults.max_connections_per_ip,
                1..=1_000_000,
            )?,
            upgrade_rate: source.number(
                ENV_UPGRADE_RATE,
                defaults.upgrade_rate as usize,
                1..=1_000_000,
            )? as u32,
            upgrade_burst: source.number(
                ENV_UPGRADE_BURST,
                defaults.upgrade_burst as usize,
                1..=1_000_000,
            )? as u32,
            trusted_proxies: source.parse(ENV_TRUSTED_PROXIES, Vec::new(), |v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|cidr| !cidr.is_empty())
                    .map(|cidr| cidr.parse::<Cidr>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| "expected CIDRs like 10.0.0.0/8, 127.0.0.1, fd00::/8".into())
            })?,
            metrics_addr: source.parse(ENV_METRICS_ADDR, None, |v| {
                v.parse()
                    .map(Some)
                    .map_err(|_| "expected HOST:PORT, e.g. 127.0.0.1:9000".into())
            })?,
            socket_send_buffer: source.number(
                ENV_SOCKET_SEND_BUFFER,
                defaults.socket_send_buffer,
                0..=64 << 20,
            )?,
            presence_linger: source.millis(ENV_PRESENCE_LINGER_MS, defaults.presence_linger, 0)?,
            presence_list: source.number(ENV_PRESENCE_LIST, defaults.presence_list, 0..=10_000)?,
            presence_events_max: source.number(
                ENV_PRESENCE_EVENTS_MAX,
                defaults.presence_events_max as usize,
                0..=1_000_000,
            )? as u64,
            presence_ttl: source.millis(ENV_PRESENCE_TTL_MS, defaults.presence_ttl, 3000)?,
            auth: source.parse(ENV_AUTH, defaults.auth, |v| match v {
                "off" => Ok(Mode::Off),
                "optional" => Ok(Mode::Optional),
                "required" => Ok(Mode::Required),
                _ => Err("expected off, optional or required".into()),
            })?,
            auth_secrets: [ENV_AUTH_SECRET, ENV_AUTH_PREVIOUS_SECRET]
                .into_iter()
                .map(|name| source.secret(name))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect(),
            auth_audience: source
                .parse(ENV_AUTH_AUDIENCE, defaults.auth_audience, |v| Ok(v.into()))?,
            auth_cookie: source.parse(ENV_AUTH_COOKIE, defaults.auth_cookie, |v| {
                if v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    Ok(v.into())
                } else {
                    Err("expected a cookie name of A-Z a-z 0-9 - _ .".into())
                }
            })?,
            token_url: source.parse(ENV_TOKEN_URL, None, |v| {
                if v.starts_with('/') || v.starts_with("https://") || v.starts_with("http://") {
                    Ok(Some(v.into()))
                } else {
                    Err("expected a path (/auth/token) or an http(s) URL".into())
                }
            })?,
            api_key: source.secret(ENV_API_KEY)?,
            log_level: source.parse(ENV_LOG, defaults.log_level, |v| match v {
                "error" => Ok(LogLevel::Error),
                "warn" => Ok(LogLevel::Warn),
                "info" => Ok(LogLevel::Info),
                "debug" => Ok(LogLevel::Debug),
                _ => Err("expected error, warn, info or debug".into()),
            })?,
            echo: source.parse(ENV_ECHO, defaults.echo, |v| match v {
                "1" | "true" => Ok(true),
                "0" | "false" => Ok(false),
                _ => Err("expected 0 or 1".into()),
            })?,
        };
        // A frame is the message plus its seq, time and sender: a feed must hold the largest.
        if config.send_queue_bytes < config.max_message_bytes + FRAME_OVERHEAD {
            return Err(ConfigError {
                variable: ENV_SEND_QUEUE_BYTES,
                reason: format!(
                    "must be at least {ENV_MAX_MESSAGE_BYTES} + {FRAME_OVERHEAD} ({})",
                    config.max_message_bytes + FRAME_OVERHEAD
                ),
            });
        }
        if config.redis.is_some() && !config.redis_cluster.is_empty() {
            return Err(ConfigError {
                variable: ENV_REDIS_CLUSTER,
                reason: "set either a Redis URL or cluster seeds, not both".into(),
            });
        }
        if config.auth != Mode::Off && config.auth_secrets.is_empty() {
            return Err(ConfigError {
                variable: ENV_AUTH_SECRET,
                reason: format!("required when {ENV_AUTH} is optional or required"),
            });
        }
        if source.get(ENV_AUTH_SECRET).is_none() && source.get(ENV_AUTH_PREVIOUS_SECRET).is_some() {
            return Err(ConfigError {
                variable: ENV_AUTH_SECRET,
                reason: format!("required when {ENV_AUTH_PREVIOUS_SECRET} is set"),
            });
        }
        if config.peer_timeout <= config.heartbeat {
            return Err(ConfigError {
                variable: ENV_PEER_TIMEOUT_MS,
                reason: format!("must be longer than {ENV_HEARTBEAT_MS}"),
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
