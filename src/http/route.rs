//! Routing a request head to its answer; no I/O.

use std::net::IpAddr;
use std::sync::Arc;

use super::api::{self, Publish};
use super::head::Head;
use super::response::{
    HEALTHZ, NO_ICON, NOT_READY, Page, READY, Status, head_of, not_found_page, ok_response,
};
use super::upgrade::{Origins, Target, Upgrade};
use crate::auth::Authenticator;
use crate::broker::{Broker, Resume};
use crate::config::{Config, FRAME_OVERHEAD};
use crate::health::Health;
use crate::limits::{AddressTable, TooMany};
use crate::metrics::Metrics;
use crate::protocol;

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The chat address: everything, and `/metrics` unless it has its own address.
    Public,
    /// `ROOMCAST_METRICS_ADDR`: `/metrics` and the health checks only.
    Metrics,
}

/// What the front end reads its answers from.
pub struct Endpoints<'a> {
    pub config: &'a Config,
    pub health: &'a Health,
    pub metrics: &'a Metrics,
    pub addresses: &'a Arc<AddressTable>,
    pub auth: &'a Authenticator,
    pub broker: &'a Broker,
    pub page: &'a Page,
    pub listener: Listener,
}

pub enum Answer {
    Respond {
        bytes: Vec<u8>,
        /// Keep the connection open for the next request.
        keep_alive: bool,
    },
    Reject(Status, &'static str),
    /// Over a per-address limit.
    TooMany(TooMany),
    /// An API answer ready to write (an error: the connection closes after it).
    Api(Vec<u8>),
    /// An API publish whose body is still to be read.
    Publish(Publish),
    /// The presence API for a room.
    Presence(String),
    Upgrade(Box<Upgrade>),
}

pub fn answer(head: &Head, endpoints: &Endpoints<'_>, client: IpAddr) -> Answer {
    if endpoints.listener == Listener::Public
        && let Some(call) = head.path.strip_prefix("/api/")
    {
        return api_call(head, call, endpoints, client);
    }
    let head_only = match head.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => return Answer::Reject(Status::MethodNotAllowed, "only GET and HEAD are served"),
    };
    let has_body = head.header("transfer-encoding").is_some()
        || head
            .header("content-length")
            .is_some_and(|length| length != "0");
    if has_body {
        return Answer::Reject(Status::BadRequest, "request bodies are not accepted");
    }
    let keep_alive = head.keep_alive();
    let fixed = |bytes: &'static [u8]| {
        let bytes = if head_only { head_of(bytes) } else { bytes };
        Answer::Respond {
            bytes: bytes.to_vec(),
            keep_alive,
        }
    };
    let page = || Answer::Respond {
        bytes: endpoints.page.response(head_only),
        keep_alive,
    };
    let metrics_here = match endpoints.listener {
        Listener::Metrics => true,
        Listener::Public => endpoints.config.metrics_addr.is_none(),
    };
    match head.path.as_str() {
        "/healthz" => fixed(HEALTHZ),
        "/readyz" if endpoints.health.is_ready() => fixed(READY),
        "/readyz" => fixed(NOT_READY),
        "/metrics" if metrics_here => {
            let text = endpoints.metrics.render(endpoints.health);
            Answer::Respond {
                bytes: ok_response("text/plain; version=0.0.4", text.as_bytes(), head_only),
                keep_alive,
            }
        }
        _ if endpoints.listener == Listener::Metrics => {
            Answer::Reject(Status::NotFound, "only /metrics, /healthz and /readyz here")
        }
        "/" => page(),
        "/favicon.ico" => fixed(NO_ICON),
        "/ws/echo" if endpoints.config.echo => upgrade(head, endpoints, Target::Echo, client),
        path if room_in(path, "/chat/").is_some() => page(),
        path if path.starts_with("/chat/") => Answer::Respond {
            bytes: not_found_page(head_only),
            keep_alive: false,
        },
        path => match room_in(path, "/ws/chat/") {
            Some(room) => match chat_target(room, &head.query) {
                Ok(target) => upgrade(head, endpoints, target, client),
                Err(reason) => Answer::Reject(Status::BadRequest, reason),
            },
            None => Answer::Reject(Status::NotFound, "no such page"),
        },
    }
}

/// The API: `rooms/<room>/messages` (POST) and `rooms/<room>/presence` (GET).
fn api_call(head: &Head, call: &str, endpoints: &Endpoints<'_>, client: IpAddr) -> Answer {
    let config = endpoints.config;
    let Some((room, what)) = call
        .strip_prefix("rooms/")
        .and_then(|rest| rest.split_once('/'))
    else {
        return Answer::Api(api::error(404, "no such API"));
    };
    if !protocol::is_valid_room(room) {
        return Answer::Api(api::error(404, "room names are 1-100 of A-Z a-z 0-9 - _ ."));
    }
    let checked = match what {
        "messages" => {
            let max_body = config.max_message_bytes + FRAME_OVERHEAD;
            api::check(head, room, config.api_key.as_ref(), max_body).map(Answer::Publish)
        }
        "presence" => api::check_read(head, config.api_key.as_ref())
            .map(|()| Answer::Presence(room.to_string())),
        _ => Err((404, "no such API")),
    };
    // A backend holding the key may post as fast as the broker takes it; only refused calls
    // (guessed keys, browsers) count against the address's upgrade rate.
    let (status, reason) = match checked {
        Ok(answer) => return answer,
        Err(refusal) => refusal,
    };
    if let Err(too_many) = endpoints.addresses.upgrade(client) {
        return Answer::TooMany(too_many);
    }
    Answer::Api(match (status, what) {
        (405, "presence") => api::wrong_method(reason, "GET"),
        (405, _) => api::wrong_method(reason, "POST"),
        _ => api::error(status, reason),
    })
}

fn upgrade(head: &Head, endpoints: &Endpoints<'_>, target: Target, client: IpAddr) -> Answer {
    let origins = if endpoints.config.allowed_origins.iter().any(|o| o == "*") {
        Origins::Any
    } else {
        Origins::SameAnd(endpoints.config.allowed_origins.clone())
    };
    let mut upgrade = match Upgrade::check(head, target, &origins) {
        Ok(upgrade) => upgrade,
        Err((status, reason)) => return Answer::Reject(status, reason),
    };
    if let Err((status, reason)) =
        upgrade.authenticate(head, endpoints.auth, &endpoints.config.auth_cookie)
    {
        return Answer::Reject(status, reason);
    }
    match endpoints.addresses.upgrade(client) {
        Ok(()) => Answer::Upgrade(Box::new(upgrade)),
        Err(too_many) => Answer::TooMany(too_many),
    }
}

/// The room in `<prefix><room>/` (the trailing slash is optional), if the name is valid.
fn room_in<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    let room = rest.strip_suffix('/').unwrap_or(rest);
    protocol::is_valid_room(room).then_some(room)
}

/// A chat upgrade's query: `since=N` and `epoch=E` to resume, or `recent=N` for the last
/// messages of the room's history (a page loading).
pub fn chat_target(room: &str, query: &str) -> Result<Target, &'static str> {
    let mut since = None;
    let mut epoch = None;
    let mut recent = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "since" => since = Some(whole(value).ok_or("since must be a whole number")?),
            "recent" => recent = Some(whole(value).ok_or("recent must be a whole number")?),
            "epoch" if is_plain_token(value) => epoch = Some(value.to_string()),
            "epoch" => return Err("epoch must be 1-64 characters of A-Z a-z 0-9 - _ ."),
            _ => {}
        }
    }
    let resume = match (since, recent) {
        (Some(since), _) => Some(Resume::Since { since, epoch }),
        (None, Some(count)) => Some(Resume::Recent(count)),
        (None, None) => None,
    };
    Ok(Target::Chat {
        room: room.to_string(),
        resume,
    })
}

fn whole(value: &str) -> Option<u64> {
    // `u64::from_str` takes a leading `+`; a query value should be digits only.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

fn is_plain_token(value: &str) -> bool {
    (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::head_for;

    fn route(request: &str, config: &Config) -> Answer {
        let health = Health::default();
        let metrics = Metrics::default();
        let addresses = Arc::new(AddressTable::new(
            10,
            crate::limits::RateLimit::new(10, 10),
            100,
        ));
        let auth = Authenticator::new(config.auth, config.auth_secrets.clone(), "roomcast".into());
        let broker = Broker::Local(crate::broker::local::LocalBroker::new(
            config,
            Arc::new(Metrics::default()),
        ));
        let endpoints = Endpoints {
            config,
            health: &health,
            metrics: &metrics,
            addresses: &addresses,
            auth: &auth,
            broker: &broker,
            page: &Page::new(config),
            listener: Listener::Public,
        };
        answer(&head_for(request), &endpoints, "192.0.2.1".parse().unwrap())
    }

    const UPGRADE: &str = "Host: t\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn routes_chat_upgrades_with_resume() {
        let request = format!("GET /ws/chat/lobby/?since=4&epoch=ab.1 HTTP/1.1\r\n{UPGRADE}\r\n");
        let Answer::Upgrade(upgrade) = route(&request, &Config::default()) else {
            panic!("expected an upgrade");
        };
        let resume = Resume::Since {
            since: 4,
            epoch: Some("ab.1".into()),
        };
        assert_eq!(
            upgrade.target,
            Target::Chat {
                room: "lobby".into(),
                resume: Some(resume)
            }
        );
        let recent = chat_target("lobby", "recent=50").unwrap();
        assert!(matches!(
            recent,
            Target::Chat {
                resume: Some(Resume::Recent(50)),
                ..
            }
        ));
    }

    #[test]
    fn rejects_what_the_contract_rejects() {
        let config = Config::default();
        let cases = [
            ("POST /healthz HTTP/1.1\r\n\r\n", Status::MethodNotAllowed),
            ("GET /nope HTTP/1.1\r\n\r\n", Status::NotFound),
            (
                "GET /ws/chat/lobby/ HTTP/1.1\r\n\r\n",
                Status::UpgradeRequired,
            ),
            ("GET /ws/echo HTTP/1.1\r\n\r\n", Status::NotFound),
            (
                "GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
                Status::BadRequest,
            ),
        ];
        for (request, expected) in cases {
            match route(request, &config) {
                Answer::Reject(status, _) => assert_eq!(status, expected, "{request}"),
                _ => panic!("{request} was not rejected"),
            }
        }
        // A bad room link gets a page a person can read.
        match route("GET /chat/bad%20room/ HTTP/1.1\r\n\r\n", &config) {
            Answer::Respond { bytes, .. } => {
                let text = String::from_utf8(bytes).unwrap();
                assert!(text.starts_with("HTTP/1.1 404") && text.contains("text/html"));
            }
            _ => panic!("a bad room link is answered with a page"),
        }
        // Browsers' icon requests get an empty answer, not an error in their console.
        match route("GET /favicon.ico HTTP/1.1\r\n\r\n", &config) {
            Answer::Respond { bytes, .. } => assert!(bytes.starts_with(b"HTTP/1.1 204")),
            _ => panic!("the icon request is answered"),
        }
        for query in ["since=x", "since=+3", "recent=-1", "epoch=a%20b"] {
            let request = format!("GET /ws/chat/lobby/?{query} HTTP/1.1\r\n{UPGRADE}\r\n");
            assert!(
                matches!(
                    route(&request, &config),
                    Answer::Reject(Status::BadRequest, _)
                ),
                "{query}"
            );
        }
    }

    #[test]
    fn any_origin_when_the_list_says_so() {
        let foreign =
            format!("GET /ws/chat/a/ HTTP/1.1\r\n{UPGRADE}Origin: https://evil.example\r\n\r\n");
        assert!(matches!(
            route(&foreign, &Config::default()),
            Answer::Reject(Status::Forbidden, _)
        ));
        let open = Config {
            allowed_origins: vec!["*".into()],
            ..Config::default()
        };
        assert!(matches!(route(&foreign, &open), Answer::Upgrade(_)));
    }
}
