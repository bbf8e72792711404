//! The blue-green scenario both deploy tests run: clients through a proxy and a steady
//! publisher, a swap from the live colour to the idle one, then the zero-loss check.
//!
//! A [`Deployment`] says how its colours start and stop (processes behind HAProxy, or compose
//! and deploy/swap); [`run`] does the rest, always in the same order. The deployment's
//! methods block, so the scenario runs them with `block_in_place` on a multi-threaded runtime
//! of its own, where the clients carry on on the other workers meanwhile.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::task::block_in_place;
use tokio::time::sleep;

use crate::traffic::{Outcome, Traffic, check};
use crate::wait::{self, WAIT};

/// The close code a draining colour sends: the only way a connection may end.
const RESTART_CLOSE: u16 = 1012;

/// Two colours behind one proxy, one of them live.
pub trait Deployment {
    /// Starts the idle colour and waits until the proxy routes to it, where the swap does
    /// not do that itself.
    fn start_idle(&mut self) {}

    /// Retires the live colour under traffic: afterwards the other one is live, and the old
    /// one has drained and exited 0. Returns what to report.
    fn swap(&mut self) -> String;

    /// WebSockets open on the live colour, when this host can read its `/metrics`.
    fn live_websockets(&self) -> Option<u64>;

    /// Begins stopping the live colour, clients still connected.
    fn begin_stop(&mut self);

    /// Waits until the live colour has drained them and exited 0. Returns what to report.
    fn finish_stop(&mut self) -> String;

    /// What might explain a failed zero-loss check, added to its message.
    fn hint(&self) -> String;
}

pub struct Scenario {
    /// Where the clients connect.
    pub proxy: SocketAddr,
    pub room: String,
    /// Readers besides the one publisher.
    pub members: usize,
    pub publish_every: Duration,
    /// Publishing runs this long before the swap, and again after it before it stops.
    pub settle: Duration,
    /// How long the publisher's last messages may take to reach every client.
    pub finish_within: Duration,
    /// How long the clients may take to end after the final stop began.
    pub stop_within: Duration,
    /// The whole scenario's bound.
    pub limit: Duration,
    /// Runtime worker threads; at least two, since the deployment blocks one at times.
    pub workers: usize,
}

/// What the scenario saw, for the test to print.
pub struct Report {
    pub outcome: Outcome,
    /// What [`Deployment::swap`] reported, and how long it took.
    pub swap: String,
    pub swap_took: Duration,
    /// What [`Deployment::finish_stop`] reported.
    pub stop: String,
}

/// Runs the scenario on a runtime of its own, failing the test after `scenario.limit`.
pub fn run(scenario: &Scenario, deployment: &mut impl Deployment) -> Report {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(scenario.workers.max(2))
        .enable_all()
        .build()
        .expect("a runtime for the clients");
    runtime.block_on(async {
        tokio::time::timeout(scenario.limit, swap_under_traffic(scenario, deployment))
            .await
            .unwrap_or_else(|_| panic!("the swap took longer than {:?} in all", scenario.limit))
    })
}

/// Connects every client through the proxy, starts publishing, swaps, stops publishing and
/// waits for every client to catch up, stops the new colour with the clients on it, and
/// checks that every client saw every message exactly once.
async fn swap_under_traffic(scenario: &Scenario, deployment: &mut impl Deployment) -> Report {
    let clients = scenario.members as u64 + 1;
    let traffic = Traffic::connect(
        scenario.proxy,
        &scenario.room,
        scenario.members,
        scenario.publish_every,
    )
    .await;
    expect_on_live(
        deployment,
        clients,
        &traffic,
        "every client on the old colour",
    )
    .await;
    traffic.start_publishing();
    sleep(scenario.settle).await;

    block_in_place(|| deployment.start_idle());
    let swap_started = Instant::now();
    let swap = block_in_place(|| deployment.swap());
    let swap_took = swap_started.elapsed();
    sleep(scenario.settle).await;
    let last_seq = traffic.finish(scenario.finish_within).await;
    expect_on_live(
        deployment,
        clients,
        &traffic,
        "every client on the new colour",
    )
    .await;

    // The new colour drains its clients too: they stop instead of reconnecting.
    traffic.hold_reconnects();
    block_in_place(|| deployment.begin_stop());
    let tallies = traffic.stop(scenario.stop_within).await;
    let stop = block_in_place(|| deployment.finish_stop());

    let outcome = check(&tallies, last_seq, RESTART_CLOSE, &deployment.hint());
    Report {
        outcome,
        swap,
        swap_took,
        stop,
    }
}

/// Waits until the live colour holds `clients` WebSockets, where the host can tell.
async fn expect_on_live(deployment: &impl Deployment, clients: u64, traffic: &Traffic, what: &str) {
    wait::until(what, WAIT, async || {
        match block_in_place(|| deployment.live_websockets()) {
            None => Ok(()),
            Some(open) if open == clients => Ok(()),
            Some(open) => Err(format!(
                "{open} WebSockets open there, not {clients}\n{}",
                traffic.describe()
            )),
        }
    })
    .await
}
