//! The HTTP/1.1 front end: one request head at a time ([head]), from a [client] whose
//! address may come from a trusted proxy, routed to an answer ([route]): health, metrics,
//! the page, or a checked WebSocket [upgrade]. Every write has a deadline, so a client that
//! pipelines requests and never reads is cut off.

mod api;
// Public, unlisted, for the property tests and fuzz targets of the parsers.
#[doc(hidden)]
pub mod client;
#[doc(hidden)]
pub mod head;
mod response;
#[doc(hidden)]
pub mod route;
mod upgrade;

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

pub use head::{MAX_HEAD_BYTES, MAX_HEADERS};
pub use response::{BUSY, Page, Status};
pub use route::{Endpoints, Listener};
pub use upgrade::{Origins, Target, Upgrade};

use crate::limits::{AddressGuard, TooMany};
use crate::shutdown::Shutdown;
use client::{Proxied, forwarded_for, proxy_header};
use head::{HeadError, read_head, read_more};
use response::{error_response, head_of, too_many_response};
use route::{Answer, answer};

/// The connection's client, as far as it is known when the connection is accepted.
pub struct Client<'a> {
    /// The peer, until a trusted proxy names the client.
    pub address: IpAddr,
    /// The peer is a trusted proxy: a PROXY header or `X-Forwarded-For` names the client.
    pub behind_proxy: bool,
    /// The connection counted against its address; filled here for proxied clients.
    pub counted: &'a mut Option<AddressGuard>,
}

/// Serves plain requests on one connection until it closes, or returns the upgrade it asked for.
pub async fn serve(
    stream: &mut TcpStream,
    endpoints: &Endpoints<'_>,
    shutdown: &mut Shutdown,
    mut client: Client<'_>,
) -> Option<Upgrade> {
    let write_limit = endpoints.config.peer_timeout;
    let mut buffer = Vec::with_capacity(1024);
    let mut first = true;
    loop {
        let deadline = Instant::now() + endpoints.config.head_timeout;
        let head = if first && client.behind_proxy {
            match strip_proxy_header(stream, &mut buffer, deadline, shutdown).await {
                Ok(named) => {
                    client.address = named.unwrap_or(client.address);
                    read_head(stream, &mut buffer, deadline, shutdown).await
                }
                Err(error) => Err(error),
            }
        } else {
            read_head(stream, &mut buffer, deadline, shutdown).await
        };
        let head = match head {
            Ok(head) => head,
            Err(HeadError::Closed) => return None,
            Err(HeadError::Reject(status, reason)) => {
                send_and_close(stream, &error_response(status, reason), write_limit).await;
                return None;
            }
        };
        if first && client.behind_proxy {
            if let Some(forwarded) = forwarded_for(&head, &endpoints.config.trusted_proxies) {
                client.address = forwarded;
            }
            match endpoints.addresses.admit(client.address) {
                Ok(guard) => *client.counted = Some(guard),
                Err(too_many) => {
                    endpoints.metrics.address_refused();
                    refuse_too_many(stream, too_many, write_limit).await;
                    return None;
                }
            }
        }
        first = false;
        match answer(&head, endpoints, client.address) {
            Answer::Respond { bytes, keep_alive } => {
                let written = timeout(write_limit, stream.write_all(&bytes)).await;
                if !matches!(written, Ok(Ok(()))) || !keep_alive || shutdown.is_signalled() {
                    return None;
                }
            }
            Answer::Reject(status, reason) => {
                let response = error_response(status, reason);
                let response = if head.is_head() {
                    head_of(&response)
                } else {
                    &response
                };
                send_and_close(stream, response, write_limit).await;
                return None;
            }
            Answer::TooMany(too_many) if head.path.starts_with("/api/") => {
                endpoints.metrics.address_refused();
                send_and_close(stream, &api::too_many(&too_many), write_limit).await;
                return None;
            }
            Answer::TooMany(too_many) => {
                endpoints.metrics.address_refused();
                refuse_too_many(stream, too_many, write_limit).await;
                return None;
            }
            Answer::Api(response) => {
                send_and_close(stream, &response, write_limit).await;
                return None;
            }
            Answer::Presence(room) => {
                let response = api::presence(&room, endpoints.broker).await;
                // An error answer says `Connection: close`, and means it.
                let keep_alive = response.starts_with(b"HTTP/1.1 200") && head.keep_alive();
                let written = timeout(write_limit, stream.write_all(&response)).await;
                if !matches!(written, Ok(Ok(()))) || !keep_alive || shutdown.is_signalled() {
                    return None;
                }
            }
            Answer::Publish(publish) => {
                let Some(body) =
                    read_body(stream, &mut buffer, publish.body_length, deadline).await
                else {
                    let response = api::error(408, "body not received in time");
                    send_and_close(stream, &response, write_limit).await;
                    return None;
                };
                let response = api::publish(&publish, &body, endpoints.broker).await;
                let keep_alive = response.starts_with(b"HTTP/1.1 200") && head.keep_alive();
                let written = timeout(write_limit, stream.write_all(&response)).await;
                if !matches!(written, Ok(Ok(()))) || !keep_alive || shutdown.is_signalled() {
                    return None;
                }
            }
            Answer::Upgrade(mut upgrade) => {
                // Only the bytes past the head go on: the start of the first frames.
                buffer.shrink_to_fit();
                upgrade.leftover = buffer;
                return Some(*upgrade);
            }
        }
    }
}

/// A request body of `length` bytes: what the head's read already took, then the rest, by
/// `deadline`. `None` if it does not come in time.
async fn read_body(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    length: usize,
    deadline: Instant,
) -> Option<Vec<u8>> {
    let from_buffer = length.min(buffer.len());
    let mut body: Vec<u8> = buffer.drain(..from_buffer).collect();
    body.resize(length, 0);
    let rest = &mut body[from_buffer..];
    match tokio::time::timeout_at(deadline, stream.read_exact(rest)).await {
        Ok(Ok(_)) => Some(body),
        _ => None,
    }
}

/// Takes a PROXY header off the start of a trusted peer's stream; the client it names.
async fn strip_proxy_header(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    deadline: Instant,
    shutdown: &mut Shutdown,
) -> Result<Option<IpAddr>, HeadError> {
    loop {
        match proxy_header(buffer) {
            Proxied::Partial => read_more(stream, buffer, deadline, shutdown).await?,
            Proxied::Absent => return Ok(None),
            Proxied::Header { client, length } => {
                buffer.drain(..length);
                return Ok(client);
            }
            Proxied::Invalid => {
                return Err(HeadError::Reject(
                    Status::BadRequest,
                    "malformed PROXY header",
                ));
            }
        }
    }
}

/// Answers 429 for a client over a per-address limit, and closes.
pub async fn refuse_too_many(stream: &mut TcpStream, too_many: TooMany, write_limit: Duration) {
    let response = too_many_response(too_many.retry_after, too_many.reason);
    send_and_close(stream, &response, write_limit).await;
}

/// How long a connection past the cap may take to say whether it is a health check.
const AT_CAP_READ: Duration = Duration::from_millis(250);
/// How long the answer past the cap waits for the client to take it before closing.
const AT_CAP_LINGER: Duration = Duration::from_millis(100);

/// Answers a connection that came past the connection cap: a health check gets its answer,
/// anything else 503 with `Retry-After` (and counts as refused).
pub async fn answer_at_cap(stream: &mut TcpStream, endpoints: &Endpoints<'_>, peer: IpAddr) {
    let mut buffer = Vec::new();
    let (_no_shutdown, mut never) = crate::shutdown::channel();
    let deadline = Instant::now() + AT_CAP_READ;
    let head = read_head(stream, &mut buffer, deadline, &mut never)
        .await
        .ok();
    let response = health_answer(head.as_ref(), endpoints, peer);
    if response.is_none() {
        endpoints.metrics.connection_refused();
    }
    let response = response.as_deref().unwrap_or(BUSY);
    if matches!(
        timeout(AT_CAP_READ, stream.write_all(response)).await,
        Ok(Ok(()))
    ) {
        let _ = stream.shutdown().await;
        discard_for(stream, AT_CAP_LINGER).await;
    }
}

/// Past the cap with every refusal slot taken: answer from what has already arrived, in one
/// non-blocking read and write, so health checks still get through a flood.
pub fn answer_at_cap_now(stream: &TcpStream, endpoints: &Endpoints<'_>, peer: IpAddr) {
    let mut bytes = [0u8; 1024];
    let read = stream.try_read(&mut bytes).unwrap_or(0);
    let head = head::parse_head(&bytes[..read])
        .ok()
        .flatten()
        .map(|(head, _)| head);
    let response = health_answer(head.as_ref(), endpoints, peer);
    if response.is_none() {
        endpoints.metrics.connection_refused();
    }
    let _ = stream.try_write(response.as_deref().unwrap_or(BUSY));
}

/// The answer to a health check; `None` for any other request.
fn health_answer(
    head: Option<&head::Head>,
    endpoints: &Endpoints<'_>,
    peer: IpAddr,
) -> Option<Vec<u8>> {
    let head = head.filter(|head| matches!(head.path.as_str(), "/healthz" | "/readyz"))?;
    match answer(head, endpoints, peer) {
        Answer::Respond { bytes, .. } => Some(bytes),
        _ => None,
    }
}

/// Writes `response` and closes politely: FIN first, then discard what the client still
/// sends for a moment, so the close does not turn into a reset that eats the response.
pub async fn send_and_close(stream: &mut TcpStream, response: &[u8], write_limit: Duration) {
    if !matches!(
        timeout(write_limit, stream.write_all(response)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let _ = stream.shutdown().await;
    discard_for(stream, Duration::from_millis(500)).await;
}

/// Reads and drops what the client still sends, for up to `limit` and 64 KiB.
async fn discard_for(stream: &mut TcpStream, limit: Duration) {
    let mut sink = [0u8; 1024];
    let _ = timeout(limit, async {
        let mut discarded = 0;
        while discarded < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}
