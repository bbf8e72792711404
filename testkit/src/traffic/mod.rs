//! Chat traffic through a proxy across a blue-green swap, and the zero-loss check.
//!
//! Every client speaks the extended protocol (`roomcast.v1`) and resumes the way the embedded
//! page does: on a close (1012 on a restart) or a broken connection it reconnects through the
//! proxy with `?since=<last seq>&epoch=<epoch>` after a short jittered backoff. Clients keep
//! every seq they are sent, so duplicates and gaps are visible to the check. One client is
//! also the publisher: it sends `p<n>` at a steady rate, and re-sends a message it has not seen
//! come back (its own copy, live or replayed) a while after it was sent, connected again.

mod check;
mod client;
mod tally;

pub use check::{Outcome, check};
pub use tally::{Tally, summary};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

/// Switches shared by every client of one run.
#[derive(Default)]
pub struct Control {
    /// The publisher sends while this is set.
    pub sending: AtomicBool,
    /// Cleared: a client whose connection ends stops instead of reconnecting.
    pub reconnect: AtomicBool,
}

pub struct Client {
    pub tally: Arc<Mutex<Tally>>,
    task: JoinHandle<()>,
}

impl Client {
    pub fn snapshot(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }
}

/// `members` readers plus one publisher (publishing every `every`) in `room` behind `proxy`.
pub struct Traffic {
    pub control: Arc<Control>,
    pub members: Vec<Client>,
    pub publisher: Client,
}

impl Traffic {
    /// Connects everyone and waits for every welcome; the publisher has not started yet.
    pub async fn connect(
        proxy: SocketAddr,
        room: &str,
        members: usize,
        every: Duration,
    ) -> Traffic {
        let control = Arc::new(Control::default());
        control.reconnect.store(true, Ordering::SeqCst);
        let base = format!("ws://{proxy}/ws/chat/{room}/");
        let spawn = |name: String, publish: Option<Duration>, seed: u64| {
            let tally = Arc::new(Mutex::new(Tally {
                name,
                ..Tally::default()
            }));
            let task = tokio::spawn(client::run(
                base.clone(),
                Arc::clone(&tally),
                Arc::clone(&control),
                publish,
                seed,
            ));
            Client { tally, task }
        };
        let members = (0..members)
            .map(|i| spawn(format!("member {i}"), None, i as u64 + 1))
            .collect();
        let publisher = spawn("publisher".into(), Some(every), 0x5eed);
        let traffic = Traffic {
            control,
            members,
            publisher,
        };
        traffic
            .wait_until(
                "every client has its welcome",
                Duration::from_secs(20),
                |t| t.connects > 0,
            )
            .await;
        traffic
    }

    pub fn clients(&self) -> impl Iterator<Item = &Client> {
        self.members.iter().chain(std::iter::once(&self.publisher))
    }

    pub fn start_publishing(&self) {
        self.control.sending.store(true, Ordering::SeqCst);
    }

    /// Stops publishing, waits until the publisher has seen each of its messages come back,
    /// then until every client has the last seq. Returns that seq.
    pub async fn finish(&self, limit: Duration) -> u64 {
        self.control.sending.store(false, Ordering::SeqCst);
        let started = Instant::now();
        loop {
            let publisher = self.publisher.snapshot();
            if publisher.pending == 0 {
                break;
            }
            if let Some(failure) = &publisher.failure {
                panic!("publisher failed: {failure}\n{}", self.describe());
            }
            assert!(
                started.elapsed() < limit,
                "{} published messages never came back within {limit:?}\n{}",
                publisher.pending,
                self.describe()
            );
            sleep(Duration::from_millis(50)).await;
        }
        let last = self.publisher.snapshot().last_seq;
        self.wait_until(
            &format!("every client reaches seq {last}"),
            limit.saturating_sub(started.elapsed()),
            |t| t.last_seq >= last,
        )
        .await;
        last
    }

    /// Polls every client's tally until `done` holds for all of them.
    pub async fn wait_until(&self, what: &str, limit: Duration, done: impl Fn(&Tally) -> bool) {
        let started = Instant::now();
        loop {
            let tallies: Vec<Tally> = self.clients().map(Client::snapshot).collect();
            if let Some(failed) = tallies.iter().find(|t| t.failure.is_some()) {
                panic!(
                    "{} failed: {}\n{}",
                    failed.name,
                    failed.failure.as_deref().unwrap_or(""),
                    self.describe()
                );
            }
            if tallies.iter().all(&done) {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "timed out after {limit:?} waiting until {what}\n{}",
                self.describe()
            );
            sleep(Duration::from_millis(25)).await;
        }
    }

    /// From now on a client whose connection ends stops instead of reconnecting.
    pub fn hold_reconnects(&self) {
        self.control.sending.store(false, Ordering::SeqCst);
        self.control.reconnect.store(false, Ordering::SeqCst);
    }

    /// Waits (within `limit` in all) for every client to stop after `hold_reconnects`, aborts
    /// the rest, and returns every tally.
    pub async fn stop(mut self, limit: Duration) -> Vec<Tally> {
        self.hold_reconnects();
        let deadline = Instant::now() + limit;
        let publisher = &mut self.publisher;
        let mut tallies = Vec::new();
        for client in self.members.iter_mut().chain(std::iter::once(publisher)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if timeout(left, &mut client.task).await.is_err() {
                client.task.abort();
            }
            tallies.push(client.tally.lock().unwrap().clone());
        }
        tallies
    }

    /// Drops every connection at once (no close handshake).
    pub fn abort(&self) {
        for client in self.clients() {
            client.task.abort();
        }
    }

    /// One line per client, for failure messages.
    pub fn describe(&self) -> String {
        self.clients()
            .map(|c| summary(&c.snapshot()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.abort();
    }
}
