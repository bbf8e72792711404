//! Counters and gauges, each declared once, rendered as Prometheus text for `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::health::Health;

/// A value that only goes up. Relaxed: the counters order nothing.
#[derive(Debug, Default)]
struct Counter(AtomicU64);

impl Counter {
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down, or is set.
#[derive(Debug, Default)]
struct Gauge(AtomicU64);

impl Gauge {
    fn up(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn down(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Declares every metric once: its field, kind, Prometheus name and help text. The struct,
/// its rendering and the list of names all come from this one table.
macro_rules! metrics {
    ($($field:ident: $kind:ident = $name:literal, $help:literal;)*) => {
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($field: $kind,)*
        }

        impl Metrics {
            /// Every metric's name, in rendering order.
            pub const NAMES: &[&str] = &[$($name,)*];

            fn render_table(&self, out: &mut String) {
                $(sample(out, $name, kind_name(stringify!($kind)), $help, self.$field.get());)*
            }
        }
    };
}

metrics! {
    connections_open: Gauge = "roomcast_connections_open", "Open TCP connections.";
    connections_total: Counter = "roomcast_connections_total", "Accepted TCP connections.";
    connections_rejected: Counter = "roomcast_connections_rejected_total",
        "Connections answered 503 at the connection cap.";
    address_refusals: Counter = "roomcast_address_refusals_total",
        "Connections and upgrades answered 429: over a per-address limit.";
    rate_limited: Counter = "roomcast_rate_limited_total",
        "Chat messages refused over the per-connection publish rate.";
    websockets_open: Gauge = "roomcast_websockets_open", "Open chat and echo WebSockets.";
    rooms: Gauge = "roomcast_rooms", "Rooms with members on this instance.";
    messages_in: Counter = "roomcast_messages_in_total", "Chat messages received from clients.";
    messages_out: Counter = "roomcast_messages_out_total", "Chat frames queued to members.";
    slow_reader_drops: Counter = "roomcast_slow_reader_drops_total",
        "Members closed because their send queue was full.";
    invalid_frames: Counter = "roomcast_invalid_frames_total",
        "Frames rejected as invalid JSON, binary or oversized.";
    inbound_refusals: Counter = "roomcast_inbound_budget_refusals_total",
        "Connections closed (1013) because large messages in flight had used the inbound budget.";
    publish_errors: Counter = "roomcast_publish_errors_total",
        "Publishes refused at once: the broker was away and its hold queue full.";
    publish_retries: Counter = "roomcast_publish_retries_total",
        "Publishes Redis refused for a moment (memory, loading, failover) and that were retried.";
    publish_failures: Counter = "roomcast_publish_failures_total",
        "Publishes Redis refused for good; each sender was told.";
    broker_reconnects: Counter = "roomcast_broker_reconnects_total",
        "Broker connections re-established.";
    publishes_held: Gauge = "roomcast_publishes_held",
        "Publishes waiting for the broker to come back.";
    startup_micros: Gauge = "roomcast_startup_microseconds", "Time from process start to listening.";
}

fn kind_name(kind: &str) -> &'static str {
    if kind == "Counter" {
        "counter"
    } else {
        "gauge"
    }
}

fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
    );
}

/// What happened, named as such; the only way the rest of the server touches a metric.
impl Metrics {
    pub fn connection_accepted(&self) {
        self.connections_total.add(1);
    }

    pub fn connection_refused(&self) {
        self.connections_rejected.add(1);
    }

    pub fn address_refused(&self) {
        self.address_refusals.add(1);
    }

    pub fn rate_limited(&self) {
        self.rate_limited.add(1);
    }

    pub fn connection_opened(&self) {
        self.connections_open.up();
    }

    pub fn connection_closed(&self) {
        self.connections_open.down();
    }

    pub fn websocket_opened(&self) {
        self.websockets_open.up();
    }

    pub fn websocket_closed(&self) {
        self.websockets_open.down();
    }

    pub fn websockets_open(&self) -> u64 {
        self.websockets_open.get()
    }

    pub fn rooms_now(&self, rooms: usize) {
        self.rooms.set(rooms as u64);
    }

    pub fn message_received(&self) {
        self.messages_in.add(1);
    }

    pub fn frames_queued(&self, members: u64) {
        self.messages_out.add(members);
    }

    pub fn slow_reader_dropped(&self) {
        self.slow_reader_drops.add(1);
    }

    pub fn invalid_frame(&self) {
        self.invalid_frames.add(1);
    }

    pub fn inbound_refused(&self) {
        self.inbound_refusals.add(1);
    }

    pub fn publish_refused(&self) {
        self.publish_errors.add(1);
    }

    pub fn publish_retried(&self) {
        self.publish_retries.add(1);
    }

    pub fn publish_failed(&self) {
        self.publish_failures.add(1);
    }

    pub fn broker_reconnected(&self) {
        self.broker_reconnects.add(1);
    }

    pub fn publishes_held_now(&self, held: usize) {
        self.publishes_held.set(held as u64);
    }

    pub fn started_in(&self, micros: u64) {
        self.startup_micros.set(micros);
    }

    pub fn render(&self, health: &Health) -> String {
        let mut out = String::with_capacity(4096);
        self.render_table(&mut out);
        sample(
            &mut out,
            "roomcast_broker_up",
            "gauge",
            "1 when the broker is reachable.",
            health.is_broker_up() as u64,
        );
        sample(
            &mut out,
            "roomcast_ready",
            "gauge",
            "1 when /readyz answers 200.",
            health.is_ready() as u64,
        );
        out
    }

    /// One sample's value, as `/metrics` shows it.
    #[cfg(test)]
    pub(crate) fn read(&self, name: &str) -> u64 {
        let text = self.render(&Health::default());
        let line = text.lines().find(|l| l.split(' ').next() == Some(name));
        line.and_then(|l| l.split(' ').nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_sample_with_help_and_type() {
        let metrics = Metrics::default();
        metrics.message_received();
        let text = metrics.render(&Health::default());
        assert!(text.contains("\nroomcast_messages_in_total 1\n"));
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        assert_eq!(samples, types);
        for name in Metrics::NAMES {
            assert!(text.contains(&format!("\n{name} ")), "{name} missing");
        }
    }

    #[test]
    fn counters_are_typed_as_counters() {
        let text = Metrics::default().render(&Health::default());
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split(' ').nth(2).unwrap();
            let counter = line.ends_with(" counter");
            assert_eq!(name.ends_with("_total"), counter, "{line}");
        }
    }
}
