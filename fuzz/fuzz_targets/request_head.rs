//! The request-head parser, the router behind it and the PROXY header reader, on any bytes:
//! no panic; a head parses the same from its own bytes; only a request that passes every
//! handshake check becomes an upgrade.
#![no_main]

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use roomcast::auth::Authenticator;
use roomcast::broker::Broker;
use roomcast::config::Config;
use roomcast::health::Health;
use roomcast::http::client::{Proxied, proxy_header};
use roomcast::http::head::{Head, parse_head};
use roomcast::http::route::{Answer, answer};
use roomcast::http::{Endpoints, Listener, Page};
use roomcast::limits::{AddressTable, RateLimit};
use roomcast::metrics::Metrics;

/// What the router reads, built once.
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

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let config = Config {
            echo: true,
            ..Config::default()
        };
        let health = Health::default();
        health.set_listening();
        let metrics = Arc::new(Metrics::default());
        // The embedded broker starts its clock on a runtime; routing never needs it to run.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let broker = {
            let _inside = runtime.enter();
            Broker::start(&config, Arc::new(Health::default()), Arc::clone(&metrics))
        };
        health.set_broker_up(true);
        World {
            addresses: Arc::new(AddressTable::new(
                1_000_000,
                RateLimit::new(1_000_000, 1_000_000),
                1_000_000,
            )),
            auth: Authenticator::new(config.auth, Vec::new(), "roomcast".into()),
            page: Page::new(&config),
            config,
            health,
            metrics,
            broker,
            _runtime: runtime,
        }
    })
}

fn endpoints(world: &World, listener: Listener) -> Endpoints<'_> {
    Endpoints {
        config: &world.config,
        health: &world.health,
        metrics: &world.metrics,
        addresses: &world.addresses,
        auth: &world.auth,
        broker: &world.broker,
        page: &world.page,
        listener,
    }
}

/// What RFC 6455 and the origin policy demand of an upgrade.
fn passes_handshake_checks(head: &Head) -> bool {
    let Some(host) = head.header("host") else {
        return false;
    };
    let key_ok = head
        .header("sec-websocket-key")
        .is_some_and(|key| key.len() == 24 && key.ends_with("=="));
    let origin_ok = head.header("origin").is_none_or(|origin| {
        let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
        let bare = |text: &str| {
            text.trim_end_matches(":80")
                .trim_end_matches(":443")
                .to_ascii_lowercase()
        };
        bare(authority) == bare(host)
    });
    head.method == "GET"
        && !head.http10
        && !host.is_empty()
        && head.count("host") == 1
        && head.has_token("upgrade", "websocket")
        && head.has_token("connection", "upgrade")
        && head.header("sec-websocket-version") == Some("13")
        && key_ok
        && origin_ok
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((head, length))) = parse_head(data) {
        assert!(length <= data.len());
        let again = parse_head(&data[..length]);
        let Ok(Some((again, again_length))) = again else {
            panic!("a head did not parse from its own bytes");
        };
        assert_eq!(again_length, length);
        assert_eq!(
            (&again.method, &again.path, &again.query, &again.headers),
            (&head.method, &head.path, &head.query, &head.headers)
        );
        let world = world();
        let client: IpAddr = [192, 0, 2, 1].into();
        for listener in [Listener::Public, Listener::Metrics] {
            if let Answer::Upgrade(_) = answer(&head, &endpoints(world, listener), client) {
                assert_eq!(listener, Listener::Public, "an upgrade on the metrics listener");
                assert!(passes_handshake_checks(&head), "upgraded: {head:?}");
            }
        }
    }
    match proxy_header(data) {
        Proxied::Header { length, .. } => assert!(length <= data.len()),
        Proxied::Partial => assert!(data.len() < 16 + 65_535),
        Proxied::Absent | Proxied::Invalid => {}
    }
});
