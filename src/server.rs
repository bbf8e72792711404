//! The accept loop, the connection cap, and shutdown in its fixed order under a deadline.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep, timeout};

use crate::config::Config;
use crate::http::{self, Client, Endpoints, Listener};
use crate::metrics::Metrics;
use crate::shared::Shared;
use crate::shutdown::{self, Shutdown};
use crate::{log, session};

/// Connections being answered 503 at once; past this they are closed after one write.
const MAX_REFUSALS: usize = 64;

/// Serves `listener` until `shutdown` resolves, then drains: the one entry point.
///
/// The order is fixed: `/readyz` turns 503 → keep serving for `shutdown_delay` so a proxy
/// notices → stop accepting → every WebSocket gets close 1012 after what was already published
/// → wait for the drain under `drain_deadline` → close the broker.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future) -> io::Result<()> {
    let addr = listener.local_addr()?;
    let metrics_listener = match config.metrics_addr {
        Some(metrics_addr) => Some(TcpListener::bind(metrics_addr).await?),
        None => None,
    };
    let shared = Arc::new(Shared::start(config));
    shared.health.set_listening();
    let (trigger, holder) = shutdown::channel();
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let acceptor = |listener, role, cap| Acceptor {
        listener,
        role,
        shared: Arc::clone(&shared),
        limit: Arc::new(Semaphore::new(cap)),
        refusals: Arc::clone(&refusals),
        shutdown: holder.clone(),
    };
    let public = acceptor(listener, Listener::Public, shared.config.max_connections);
    let metrics = metrics_listener.map(|l| acceptor(l, Listener::Metrics, MAX_METRICS_CONNECTIONS));
    drop(holder);

    let startup = crate::process_start().elapsed();
    shared.metrics.started_in(startup.as_micros() as u64);
    let metrics_addr = metrics.as_ref().and_then(|m| m.listener.local_addr().ok());
    log::info(
        "listening",
        json!({
            "addr": addr.to_string(),
            "metrics_addr": metrics_addr.map(|a| a.to_string()),
            "startup_us": startup.as_micros() as u64,
            "broker": shared.broker.name(),
            "max_connections": shared.config.max_connections,
        }),
    );

    accept_until(&public, metrics.as_ref(), shutdown).await;
    shared.health.start_draining();
    let delay = shared.config.shutdown_delay;
    log::info(
        "draining",
        json!({ "ready": false, "close_in_ms": delay.as_millis() as u64 }),
    );
    accept_until(&public, metrics.as_ref(), sleep(delay)).await;
    drop((public, metrics));

    let drain_started = Instant::now();
    let websockets = shared.metrics.websockets_open();
    trigger.start();
    let deadline = shared.config.drain_deadline;
    let drained = timeout(deadline, async {
        trigger.drained().await;
        shared.broker.close().await;
    })
    .await
    .is_ok();
    if !drained {
        log::warn(
            "drain deadline passed",
            json!({ "deadline_ms": deadline.as_millis() as u64, "connections_left": trigger.remaining() }),
        );
    }
    log::info(
        "stopped",
        json!({
            "websockets_closed": websockets,
            "drained": drained,
            "drain_ms": drain_started.elapsed().as_millis() as u64,
        }),
    );
    Ok(())
}

/// Connections the metrics listener serves at once.
const MAX_METRICS_CONNECTIONS: usize = 64;

/// Accepts on the public listener (and the metrics one, if any) until `until` resolves.
async fn accept_until(public: &Acceptor, metrics: Option<&Acceptor>, until: impl Future) {
    match metrics {
        None => public.accept_until(until).await,
        Some(metrics) => {
            tokio::select! {
                _ = public.accept_until(until) => {}
                _ = metrics.accept_until(std::future::pending::<()>()) => {}
            }
        }
    }
}

struct Acceptor {
    listener: TcpListener,
    role: Listener,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    /// Caps the short tasks that answer 503 past the connection cap.
    refusals: Arc<Semaphore>,
    /// Cloned into every connection task; the drain waits for all clones to drop.
    shutdown: Shutdown,
}

impl Acceptor {
    async fn accept_until(&self, until: impl Future) {
        tokio::pin!(until);
        let mut backoff = Duration::ZERO;
        loop {
            let accepted = tokio::select! {
                _ = &mut until => return,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::ZERO;
                    self.admit(stream, peer);
                }
                // Out of file descriptors and the like: wait for connections to close
                // instead of spinning, and say so once per streak.
                Err(error) => {
                    if backoff.is_zero() {
                        log::warn("accept failed", json!({ "error": error.to_string() }));
                    }
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                    tokio::select! {
                        _ = &mut until => return,
                        _ = sleep(backoff) => {}
                    }
                }
            }
        }
    }

    fn admit(&self, stream: TcpStream, peer: SocketAddr) {
        let metrics = &self.shared.metrics;
        metrics.connection_accepted();
        match Arc::clone(&self.limit).try_acquire_owned() {
            Ok(permit) => {
                let shared = Arc::clone(&self.shared);
                let role = self.role;
                tokio::spawn(handle(
                    stream,
                    peer,
                    role,
                    shared,
                    self.shutdown.clone(),
                    permit,
                ));
            }
            // Past the cap, health checks are still answered (the reserve of file descriptors
            // is for them); everything else gets 503.
            Err(_) => match Arc::clone(&self.refusals).try_acquire_owned() {
                Ok(permit) => {
                    let shared = Arc::clone(&self.shared);
                    let role = self.role;
                    tokio::spawn(async move {
                        let mut stream = stream;
                        let endpoints = endpoints(&shared, role);
                        http::answer_at_cap(&mut stream, &endpoints, peer.ip()).await;
                        drop(permit);
                    });
                }
                // Refusing a flood: one non-blocking read and write, then close.
                Err(_) => {
                    let endpoints = endpoints(&self.shared, self.role);
                    http::answer_at_cap_now(&stream, &endpoints, peer.ip());
                }
            },
        }
    }
}

fn endpoints(shared: &Shared, listener: Listener) -> Endpoints<'_> {
    Endpoints {
        config: &shared.config,
        health: &shared.health,
        metrics: &shared.metrics,
        addresses: &shared.addresses,
        auth: &shared.auth,
        broker: &shared.broker,
        page: &shared.page,
        listener,
    }
}

async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    role: Listener,
    shared: Arc<Shared>,
    mut shutdown: Shutdown,
    permit: OwnedSemaphorePermit,
) {
    let _open = OpenConnection::new(&shared.metrics, permit);
    // What a client that stops reading pins in the kernel is bounded here.
    if shared.config.socket_send_buffer > 0 {
        let socket = socket2::SockRef::from(&stream);
        let _ = socket.set_send_buffer_size(shared.config.socket_send_buffer);
    }
    let endpoints = endpoints(&shared, role);
    let trusted = &shared.config.trusted_proxies;
    let behind_proxy = trusted.iter().any(|cidr| cidr.contains(peer.ip()));
    // A direct client is counted against its address before it sends anything, so idle
    // connections count too; a proxied one once its proxy has named it.
    let mut counted = None;
    if !behind_proxy && role == Listener::Public {
        match shared.addresses.admit(peer.ip()) {
            Ok(guard) => counted = Some(guard),
            Err(too_many) => {
                shared.metrics.address_refused();
                // Boxed: a rare path, which would otherwise size every connection's task.
                Box::pin(http::refuse_too_many(
                    &mut stream,
                    too_many,
                    shared.config.peer_timeout,
                ))
                .await;
                return;
            }
        }
    }
    let client = Client {
        address: peer.ip(),
        behind_proxy,
        counted: &mut counted,
    };
    // Each phase in its own allocation, so an idle WebSocket does not also carry the
    // HTTP phase's state, and vice versa: the task stays small at thousands of connections.
    let upgrade = Box::pin(http::serve(&mut stream, &endpoints, &mut shutdown, client)).await;
    if let Some(upgrade) = upgrade {
        Box::pin(session::run(
            stream,
            upgrade,
            &shared,
            shutdown,
            counted.as_ref(),
        ))
        .await;
    }
    drop(counted);
}

/// Counts a connection as open, and frees its slot under the cap, until dropped.
struct OpenConnection<'a> {
    metrics: &'a Metrics,
    _permit: OwnedSemaphorePermit,
}

impl<'a> OpenConnection<'a> {
    fn new(metrics: &'a Metrics, permit: OwnedSemaphorePermit) -> Self {
        metrics.connection_opened();
        OpenConnection {
            metrics,
            _permit: permit,
        }
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}
