//! What every connection task shares: configuration, health, metrics and the broker.

use std::sync::Arc;

use crate::broker::Broker;
use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;

pub struct Shared {
    pub config: Config,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub broker: Broker,
}

impl Shared {
    /// Starts the broker the configuration names; a Redis broker connects in the background.
    pub fn start(config: Config) -> Shared {
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(Health::default());
        let broker = Broker::start(&config, Arc::clone(&health), Arc::clone(&metrics));
        Shared {
            config,
            health,
            metrics,
            broker,
        }
    }
}
