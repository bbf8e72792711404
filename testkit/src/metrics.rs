//! Reading `/metrics`: one sample, polling until a value; async for tests, blocking for
//! benchmarks and the container checks.

use std::net::SocketAddr;

use crate::http;
use crate::wait::{self, WAIT};

/// The value of the first series named exactly `name` in Prometheus text.
pub fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?.trim();
        value
            .parse()
            .ok()
            .or_else(|| value.parse::<f64>().ok().map(|v| v as u64))
    })
}

/// One sample; fails the test if `/metrics` lacks it.
pub async fn read(addr: SocketAddr, name: &str) -> u64 {
    let text = http::get(addr, "/metrics").await.text();
    sample(&text, name).unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Polls until `name` is `value`; fails the test after [`WAIT`].
pub async fn wait_for(addr: SocketAddr, name: &str, value: u64) {
    wait::until(&format!("{name} = {value}"), WAIT, async || {
        match read(addr, name).await {
            current if current == value => Ok(()),
            current => Err(format!("{name} is {current}")),
        }
    })
    .await
}

/// One sample over a blocking connection; `None` when unreachable, not 200, or missing.
pub fn read_blocking(addr: SocketAddr, name: &str) -> Option<u64> {
    let response = http::get_blocking(addr, "/metrics").ok()?;
    (response.status == 200)
        .then(|| sample(&response.text(), name))
        .flatten()
}
