//! The request-head parser and the router: no bytes make either panic; a request built from
//! valid parts parses back to those parts, and any shorter prefix of it asks for more; an
//! upgrade with any one of its requirements broken is never routed to a WebSocket, while an
//! intact one always is.

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;
use roomcast::auth::Authenticator;
use roomcast::broker::Broker;
use roomcast::config::Config;
use roomcast::health::Health;
use roomcast::http::head::parse_head;
use roomcast::http::route::{Answer, answer};
use roomcast::http::{Endpoints, Listener, Page, Status};
use roomcast::limits::{AddressTable, RateLimit};
use roomcast::metrics::Metrics;

/// What the router reads, with limits that never get in the way.
struct World {
    config: Config,
    health: Health,
    metrics: Arc<Metrics>,
    addresses: Arc<AddressTable>,
    auth: Authenticator,
    broker: Broker,
    page: Page,
    _runtime: tokio::runtime::Runtime,
}

impl World {
    fn new() -> World {
        let config = Config::default();
        let health = Health::default();
        health.set_listening();
        health.set_broker_up(true);
        let metrics = Arc::new(Metrics::default());
        // The embedded broker starts its clock on a runtime; routing never needs it to run.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let broker = {
            let _inside = runtime.enter();
            Broker::start(&config, Arc::new(Health::default()), Arc::clone(&metrics))
        };
        let unlimited = RateLimit::new(1_000_000, 1_000_000);
        World {
            addresses: Arc::new(AddressTable::new(1_000_000, unlimited, 1_000_000)),
            auth: Authenticator::new(config.auth, Vec::new(), "roomcast".into()),
            page: Page::new(&config),
            config,
            health,
            metrics,
            broker,
            _runtime: runtime,
        }
    }

    fn route(&self, request: &[u8], listener: Listener) -> Option<Answer> {
        let (head, _) = parse_head(request).ok()??;
        let endpoints = Endpoints {
            config: &self.config,
            health: &self.health,
            metrics: &self.metrics,
            addresses: &self.addresses,
            auth: &self.auth,
            broker: &self.broker,
            page: &self.page,
            listener,
        };
        let client: IpAddr = [192, 0, 2, 1].into();
        Some(answer(&head, &endpoints, client))
    }
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}"
}

/// A header value: visible ASCII and inner spaces (the parser trims the ends).
fn header_value() -> impl Strategy<Value = String> {
    "[ -~]{0,40}"
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((token(), header_value()), 0..20)
}

/// Bytes shaped like a request head often enough to get past the first line.
fn head_ish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"GET ".to_vec()),
        Just(b"HEAD ".to_vec()),
        Just(b"/ws/chat/a/".to_vec()),
        Just(b"/healthz".to_vec()),
        Just(b" HTTP/1.1\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"Host: x\r\n".to_vec()),
        Just(b"Upgrade: websocket\r\nConnection: Upgrade\r\n".to_vec()),
        Just(b"Sec-WebSocket-Version: 13\r\n".to_vec()),
        Just(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n".to_vec()),
        Just(b"Origin: http://x\r\n".to_vec()),
        prop::collection::vec(any::<u8>(), 0..12),
    ];
    prop::collection::vec(piece, 0..14).prop_map(|pieces| pieces.concat())
}

/// One way to spoil a valid upgrade, and the status it must get.
#[derive(Debug, Clone)]
enum Defect {
    NoHost,
    EmptyHost,
    SecondHost(String),
    Key(String),
    Version(String),
    Http10,
    Method(String),
    Origin(String),
    NoUpgradeToken,
}

fn defect() -> impl Strategy<Value = Defect> {
    let bad_key = prop_oneof![
        "[A-Za-z0-9+/=!*-]{0,40}",
        prop::collection::vec(any::<u8>(), 0..40)
            .prop_filter("not 16 bytes", |b| b.len() != 16)
            .prop_map(|bytes| STANDARD.encode(bytes)),
    ]
    .prop_filter("not a 16-byte nonce", |key| {
        key.len() != 24 || STANDARD.decode(key).map_or(true, |b| b.len() != 16)
    });
    prop_oneof![
        Just(Defect::NoHost),
        Just(Defect::EmptyHost),
        "[a-z.]{1,12}".prop_map(Defect::SecondHost),
        bad_key.prop_map(Defect::Key),
        "[0-9]{1,3}"
            .prop_filter("not 13", |v| v != "13")
            .prop_map(Defect::Version),
        Just(Defect::Http10),
        "[A-Z]{1,7}"
            .prop_filter("not GET", |m| m != "GET")
            .prop_map(Defect::Method),
        "(https?|ftp|ws)://[a-z]{1,10}(:[0-9]{1,5})?"
            .prop_filter("not the same origin", |o| {
                !matches!(
                    o.as_str(),
                    "http://chat" | "https://chat" | "http://chat:80" | "https://chat:443"
                )
            })
            .prop_map(Defect::Origin),
        Just(Defect::NoUpgradeToken),
    ]
}

/// An upgrade to `room` with `key`, spoiled by `defect` if given.
fn upgrade(room: &str, key: &str, defect: Option<&Defect>) -> String {
    let method = match defect {
        Some(Defect::Method(method)) => method.as_str(),
        _ => "GET",
    };
    let version = if matches!(defect, Some(Defect::Http10)) {
        "1.0"
    } else {
        "1.1"
    };
    let mut request = format!("{method} /ws/chat/{room}/ HTTP/{version}\r\n");
    match defect {
        Some(Defect::NoHost) => {}
        Some(Defect::EmptyHost) => request.push_str("Host:\r\n"),
        Some(Defect::SecondHost(other)) => {
            request.push_str(&format!("Host: chat\r\nHost: {other}\r\n"))
        }
        _ => request.push_str("Host: chat\r\n"),
    }
    if !matches!(defect, Some(Defect::NoUpgradeToken)) {
        request.push_str("Upgrade: websocket\r\n");
    }
    request.push_str("Connection: keep-alive, Upgrade\r\n");
    let version = match defect {
        Some(Defect::Version(version)) => version.as_str(),
        _ => "13",
    };
    request.push_str(&format!("Sec-WebSocket-Version: {version}\r\n"));
    let key = match defect {
        Some(Defect::Key(bad)) => bad.as_str(),
        _ => key,
    };
    request.push_str(&format!("Sec-WebSocket-Key: {key}\r\n"));
    if let Some(Defect::Origin(origin)) = defect {
        request.push_str(&format!("Origin: {origin}\r\n"));
    }
    request.push_str("\r\n");
    request
}

fn expected_status(defect: &Defect) -> Status {
    match defect {
        Defect::Version(_) | Defect::NoUpgradeToken => Status::UpgradeRequired,
        Defect::Method(method) if method != "HEAD" => Status::MethodNotAllowed,
        Defect::Origin(_) => Status::Forbidden,
        _ => Status::BadRequest,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_bytes_panic_the_parser_or_the_router(
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..600), head_ish()],
    ) {
        let world = World::new();
        if let Ok(Some((_, length))) = parse_head(&bytes) {
            prop_assert!(length <= bytes.len());
        }
        for listener in [Listener::Public, Listener::Metrics] {
            if let Some(answer) = world.route(&bytes, listener) {
                // Arbitrary bytes never carry a whole valid handshake.
                prop_assert!(!matches!(answer, Answer::Upgrade(_)), "{:?}", String::from_utf8_lossy(&bytes));
            }
        }
    }

    #[test]
    fn a_request_from_valid_parts_parses_back_to_them(
        method in "[A-Z]{1,10}",
        path in "/[A-Za-z0-9._~!$'()*+,;=:@/%-]{0,60}",
        query in "[A-Za-z0-9=&._~%-]{0,40}",
        http10: bool,
        headers in headers(),
        after in prop::collection::vec(any::<u8>(), 0..30),
    ) {
        let target = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
        let mut request = format!("{method} {target} HTTP/1.{}\r\n", u8::from(!http10));
        for (name, value) in &headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.clone().into_bytes();
        bytes.extend_from_slice(&after);
        let parsed = parse_head(&bytes);
        let Ok(Some((head, length))) = parsed else {
            return Err(TestCaseError::fail(format!("{request:?} did not parse")));
        };
        prop_assert_eq!(length, request.len());
        prop_assert_eq!(&head.method, &method);
        prop_assert_eq!(&head.path, &path);
        prop_assert_eq!(&head.query, &query);
        prop_assert_eq!(head.http10, http10);
        let trimmed: Vec<(String, String)> = headers
            .iter()
            .map(|(name, value)| (name.clone(), value.trim().to_string()))
            .collect();
        prop_assert_eq!(&head.headers, &trimmed);
        for cut in [1, request.len() / 2, request.len() - 1] {
            prop_assert!(matches!(parse_head(&request.as_bytes()[..cut]), Ok(None)), "prefix {}", cut);
        }
    }

    #[test]
    fn only_an_intact_upgrade_is_routed_to_a_websocket(
        room in "[A-Za-z0-9._-]{1,100}",
        nonce: [u8; 16],
        defect in prop::option::of(defect()),
    ) {
        let world = World::new();
        let request = upgrade(&room, &STANDARD.encode(nonce), defect.as_ref());
        let answer = world.route(request.as_bytes(), Listener::Public);
        match (&defect, answer) {
            (None, Some(Answer::Upgrade(_))) => {}
            (Some(defect), Some(Answer::Reject(status, _))) => {
                prop_assert_eq!(status, expected_status(defect), "{:?}", request);
            }
            (_, other) => {
                let what = other.map(|a| match a {
                    Answer::Upgrade(_) => "an upgrade",
                    Answer::Reject(..) => "a refusal",
                    _ => "another answer",
                });
                return Err(TestCaseError::fail(format!("{request:?} got {what:?}")));
            }
        }
        let on_metrics = world.route(request.as_bytes(), Listener::Metrics);
        prop_assert!(!matches!(on_metrics, Some(Answer::Upgrade(_))));
    }
}
