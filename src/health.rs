//! Liveness and readiness: the flags `/healthz` and `/readyz` answer from.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    listening: AtomicBool,
    draining: AtomicBool,
    broker_up: AtomicBool,
}

impl Health {
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    /// The first step of shutdown: from here on `/readyz` answers 503 for good.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn set_broker_up(&self, up: bool) {
        self.broker_up.store(up, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn is_broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Acquire)
    }

    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Acquire) && self.is_broker_up() && !self.is_draining()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_listening_with_a_broker_and_not_draining() {
        let health = Health::default();
        assert!(!health.is_ready());
        health.set_listening();
        assert!(!health.is_ready());
        health.set_broker_up(true);
        assert!(health.is_ready());
        health.set_broker_up(false);
        assert!(!health.is_ready());
        health.set_broker_up(true);
        health.start_draining();
        assert!(!health.is_ready());
    }
}
