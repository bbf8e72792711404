//! Counters and gauges, rendered as Prometheus text for `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::health::Health;

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub websockets_open: AtomicU64,
    pub rooms: AtomicU64,
    pub messages_in: AtomicU64,
    /// Frames queued to members: one per member per published message.
    pub messages_out: AtomicU64,
    /// Members closed because their send queue was full.
    pub slow_reader_drops: AtomicU64,
    pub invalid_frames: AtomicU64,
    pub publish_errors: AtomicU64,
    pub broker_reconnects: AtomicU64,
    /// Publishes waiting for the broker to come back.
    pub publishes_held: AtomicU64,
    pub startup_micros: AtomicU64,
}

/// Adds one; relaxed because the counters order nothing.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub fn drop_one(gauge: &AtomicU64) {
    gauge.fetch_sub(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn render(&self, health: &Health) -> String {
        let mut out = String::with_capacity(2048);
        let mut put = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        put(
            "roomcast_connections_open",
            "gauge",
            "Open TCP connections.",
            get(&self.connections_open),
        );
        put(
            "roomcast_connections_total",
            "counter",
            "Accepted TCP connections.",
            get(&self.connections_total),
        );
        put(
            "roomcast_connections_rejected_total",
            "counter",
            "Connections answered 503 at the connection cap.",
            get(&self.connections_rejected),
        );
        put(
            "roomcast_websockets_open",
            "gauge",
            "Open chat and echo WebSockets.",
            get(&self.websockets_open),
        );
        put(
            "roomcast_rooms",
            "gauge",
            "Rooms with members on this instance.",
            get(&self.rooms),
        );
        put(
            "roomcast_messages_in_total",
            "counter",
            "Chat messages received from clients.",
            get(&self.messages_in),
        );
        put(
            "roomcast_messages_out_total",
            "counter",
            "Chat frames queued to members.",
            get(&self.messages_out),
        );
        put(
            "roomcast_slow_reader_drops_total",
            "counter",
            "Members closed because their send queue was full.",
            get(&self.slow_reader_drops),
        );
        put(
            "roomcast_invalid_frames_total",
            "counter",
            "Frames rejected as invalid JSON, binary or oversized.",
            get(&self.invalid_frames),
        );
        put(
            "roomcast_publish_errors_total",
            "counter",
            "Publishes refused because the broker was unavailable.",
            get(&self.publish_errors),
        );
        put(
            "roomcast_broker_reconnects_total",
            "counter",
            "Broker connections re-established.",
            get(&self.broker_reconnects),
        );
        put(
            "roomcast_publishes_held",
            "gauge",
            "Publishes waiting for the broker to come back.",
            get(&self.publishes_held),
        );
        put(
            "roomcast_broker_up",
            "gauge",
            "1 when the broker is reachable.",
            health.is_broker_up() as u64,
        );
        put(
            "roomcast_ready",
            "gauge",
            "1 when /readyz answers 200.",
            health.is_ready() as u64,
        );
        put(
            "roomcast_startup_microseconds",
            "gauge",
            "Time from process start to listening.",
            get(&self.startup_micros),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_sample_with_help_and_type() {
        let metrics = Metrics::default();
        bump(&metrics.messages_in);
        let text = metrics.render(&Health::default());
        assert!(text.contains("\nroomcast_messages_in_total 1\n"));
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(samples, types);
    }
}
