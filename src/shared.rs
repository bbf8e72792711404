//! What every connection task shares: configuration, health, metrics and the broker.

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::config::Config;
use crate::health::Health;
use crate::http::Page;
use crate::limits::{AddressTable, InboundBudget, RateLimit};
use crate::metrics::Metrics;

pub struct Shared {
    pub config: Config,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub broker: Broker,
    /// Large messages being received, over every connection.
    pub inbound: Arc<InboundBudget>,
    /// Connections and upgrade rates per client address.
    pub addresses: Arc<AddressTable>,
    /// How fast one connection may publish.
    pub publish_rate: RateLimit,
    pub auth: Authenticator,
    /// The chat page with this server's settings, built on its first request.
    pub page: Page,
}

impl Shared {
    /// Starts the broker the configuration names; a Redis broker connects in the background.
    pub fn start(config: Config) -> Shared {
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(Health::default());
        let broker = Broker::start(&config, Arc::clone(&health), Arc::clone(&metrics));
        let inbound = Arc::new(InboundBudget::new(config.inbound_budget_bytes));
        let upgrades = RateLimit::new(config.upgrade_rate, config.upgrade_burst);
        let addresses = Arc::new(AddressTable::new(
            config.max_connections_per_ip,
            upgrades,
            config.max_connections,
        ));
        let publish_rate = RateLimit::new(config.rate, config.burst);
        let auth = Authenticator::new(
            config.auth,
            config.auth_secrets.clone(),
            config.auth_audience.clone(),
        );
        let page = Page::new(&config);
        Shared {
            config,
            health,
            metrics,
            broker,
            inbound,
            addresses,
            publish_rate,
            auth,
            page,
        }
    }
}
