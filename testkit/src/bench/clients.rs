//! What a load generator's clients share: their WebSocket settings, and the wait until every
//! one of them is connected.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::metrics;

/// tungstenite 0.30 zero-fills `read_buffer_size` bytes before every read (WouldBlock ones
/// too), so a chat-sized buffer keeps the generator from spending its time in memset.
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(16 * 1024)
}

/// Waits until the servers' `roomcast_websockets_open` add up to `want`.
pub async fn wait_for_websockets(addrs: &[SocketAddr], want: u64) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let addrs = addrs.to_vec();
        let open = tokio::task::spawn_blocking(move || {
            addrs
                .iter()
                .map(|addr| metrics::read_blocking(*addr, "roomcast_websockets_open").unwrap_or(0))
                .sum::<u64>()
        })
        .await
        .unwrap_or(0);
        if open == want {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "roomcast_websockets_open stayed at {open}, expected {want}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
