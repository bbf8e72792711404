//! The HTTP/1.1 front end: one request head at a time ([head]), routed to an answer
//! ([route]): health, metrics, the page, or a checked WebSocket [upgrade]. Every write has
//! a deadline, so a client that pipelines requests and never reads is cut off.

mod head;
mod response;
mod route;
mod upgrade;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

pub use head::{MAX_HEAD_BYTES, MAX_HEADERS};
pub use response::{BUSY, Status};
pub use route::Endpoints;
pub use upgrade::{Origins, Target, Upgrade};

use crate::shutdown::Shutdown;
use head::{HeadError, read_head};
use response::{error_response, head_of};
use route::{Answer, answer};

/// Serves plain requests on one connection until it closes, or returns the upgrade it asked for.
pub async fn serve(
    stream: &mut TcpStream,
    endpoints: &Endpoints<'_>,
    shutdown: &mut Shutdown,
) -> Option<Upgrade> {
    let write_limit = endpoints.config.peer_timeout;
    let mut buffer = Vec::with_capacity(1024);
    loop {
        let head_timeout = endpoints.config.head_timeout;
        let head = match read_head(stream, &mut buffer, head_timeout, shutdown).await {
            Ok(head) => head,
            Err(HeadError::Closed) => return None,
            Err(HeadError::Reject(status, reason)) => {
                send_and_close(stream, &error_response(status, reason), write_limit).await;
                return None;
            }
        };
        match answer(&head, endpoints) {
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
            Answer::Upgrade(mut upgrade) => {
                // Only the bytes past the head go on: the start of the first frames.
                buffer.shrink_to_fit();
                upgrade.leftover = buffer;
                return Some(upgrade);
            }
        }
    }
}

/// How long a connection past the cap may take to say whether it is a health check.
const AT_CAP_READ: Duration = Duration::from_secs(1);

/// Answers a connection that came past the connection cap: a health check gets its answer,
/// anything else 503 with `Retry-After` (and counts as refused).
pub async fn answer_at_cap(stream: &mut TcpStream, endpoints: &Endpoints<'_>) {
    let write_limit = endpoints.config.peer_timeout.min(AT_CAP_READ);
    let mut buffer = Vec::new();
    let (_no_shutdown, mut never) = crate::shutdown::channel();
    let head = read_head(stream, &mut buffer, AT_CAP_READ, &mut never).await;
    if let Ok(head) = head
        && matches!(head.path.as_str(), "/healthz" | "/readyz")
        && let Answer::Respond { bytes, .. } = answer(&head, endpoints)
    {
        send_and_close(stream, &bytes, write_limit).await;
        return;
    }
    endpoints.metrics.connection_refused();
    send_and_close(stream, BUSY, write_limit).await;
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
    let mut sink = [0u8; 1024];
    let _ = timeout(Duration::from_millis(500), async {
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
