//! What a test asks of any running server, a child process or one in this process: its
//! URLs and its metrics.

use std::future::Future;
use std::net::SocketAddr;

use crate::metrics;

pub trait Endpoint {
    fn addr(&self) -> SocketAddr;

    /// `ws://<addr><path>`.
    fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr())
    }

    /// One sample from `/metrics`; fails the test if it is missing.
    fn metric(&self, name: &str) -> impl Future<Output = u64> {
        metrics::read(self.addr(), name)
    }

    /// Polls `/metrics` until `name` is `value`; fails the test after [`WAIT`](crate::WAIT).
    fn wait_metric(&self, name: &str, value: u64) -> impl Future<Output = ()> {
        metrics::wait_for(self.addr(), name, value)
    }
}
