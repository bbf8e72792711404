//! What every connection task shares: configuration, health, metrics and the broker.

use std::sync::Arc;

use crate::broker::Broker;
use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::session::gate::InboundBudget;

pub struct Shared {
    pub config: Config,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub broker: Broker,
    /// Large messages being received, over every connection.
    pub inbound: Arc<InboundBudget>,
}

impl Shared {
    /// Starts the broker the configuration names; a Redis broker connects in the background.
    pub fn start(config: Config) -> Shared {
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(Health::default());
        let broker = Broker::start(&config, Arc::clone(&health), Arc::clone(&metrics));
        let inbound = Arc::new(InboundBudget::new(config.inbound_budget_bytes));
        Shared {
            config,
            health,
            metrics,
            broker,
            inbound,
        }
    }
}
