//! One WebSocket, from the upgrade to the close: joining the room, then the chat (or echo)
//! loop, with every read watched by the [gate](gate) and the [clock](clock) and every
//! write under a deadline ([outbound]).

mod chat;
mod clock;
mod echo;
pub mod gate;
mod outbound;

use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use std::sync::Arc;

use crate::broker::{Resume, Visitor};
use crate::http::{Status, Target, Upgrade};
use crate::limits::AddressGuard;
use crate::metrics::Metrics;
use crate::shared::Shared;
use crate::shutdown::Shutdown;
use chat::ChatSession;
use clock::PeerClock;
use gate::{Gated, Refused};
use outbound::Socket;

/// Runs an upgraded connection to its end.
pub async fn run(
    stream: TcpStream,
    upgrade: Upgrade,
    shared: &Shared,
    shutdown: Shutdown,
    address: Option<&AddressGuard>,
) {
    // The handshake's state is freed before the long-lived part starts: at thousands of idle
    // connections, what a session keeps allocated is what the server costs.
    let opened = Box::pin(handshake(stream, upgrade, shared, address)).await;
    shared.metrics.websocket_opened();
    match opened {
        Some(Opened::Chat(session)) => Box::pin(session.run(shutdown)).await,
        Some(Opened::Echo(socket)) => Box::pin(echo::run(*socket, shared, shutdown)).await,
        None => {}
    }
    shared.metrics.websocket_closed();
}

enum Opened<'a> {
    Chat(Box<ChatSession<'a>>),
    Echo(Box<Socket>),
}

/// Joins the room (answering 503 if the broker is away), then completes the upgrade.
async fn handshake<'a>(
    mut stream: TcpStream,
    mut upgrade: Upgrade,
    shared: &'a Shared,
    address: Option<&'a AddressGuard>,
) -> Option<Opened<'a>> {
    let limit = shared.config.peer_timeout;
    let identity = upgrade.identity.take();
    let Target::Chat { room, resume } = &upgrade.target else {
        upgrade.accept(&mut stream, limit).await.ok()?;
        let socket = open(stream, upgrade.leftover, shared).await;
        return Some(Opened::Echo(Box::new(socket)));
    };
    let extended = upgrade.extended || matches!(resume, Some(Resume::Since { .. }));
    let visitor = identity.as_ref().map(|identity| Visitor {
        id: identity.id.clone(),
        user: Arc::clone(&identity.user_json),
    });
    let Ok(membership) = shared.broker.join(room, resume.clone(), visitor).await else {
        Upgrade::refuse(
            &mut stream,
            limit,
            Status::ServiceUnavailable,
            "broker unavailable",
        )
        .await;
        return None;
    };
    upgrade.accept(&mut stream, limit).await.ok()?;
    let room = room.clone();
    let socket = open(stream, upgrade.leftover, shared).await;
    let clock = PeerClock::new(shared.config.heartbeat, shared.config.peer_timeout);
    let mut session = ChatSession::new(socket, membership, room, extended, shared, clock);
    session.identify(identity);
    session.publish_from(address);
    Some(Opened::Chat(Box::new(session)))
}

async fn open(stream: TcpStream, leftover: Vec<u8>, shared: &Shared) -> Socket {
    let _ = stream.set_nodelay(true);
    let max = shared.config.max_message_bytes;
    let gated = Gated::new(stream, leftover, max, shared.inbound.clone());
    WebSocketStream::from_raw_socket(gated, Role::Server, Some(outbound::config(max))).await
}

/// Why a session ends.
enum Ending {
    /// The peer closed, or the connection broke or stopped taking our writes.
    Gone,
    Shutdown,
    /// The peer sent nothing, not even a pong, for the peer timeout.
    Silent,
    /// Close with this code and reason.
    Close(CloseCode, &'static str),
}

impl Ending {
    fn describe(&self) -> &'static str {
        match self {
            Ending::Gone => "peer closed, went away or stopped reading",
            Ending::Shutdown => "server shutdown",
            Ending::Silent => "peer silent past the timeout",
            Ending::Close(_, reason) => reason,
        }
    }
}

/// Maps a read error to the close the peer should get.
fn ending_for(error: WsError, metrics: &Metrics) -> Ending {
    match error {
        WsError::Capacity(_) => {
            metrics.invalid_frame();
            Ending::Close(CloseCode::Size, "message too large")
        }
        WsError::Utf8(_) => {
            metrics.invalid_frame();
            Ending::Close(CloseCode::Invalid, "text frame is not valid UTF-8")
        }
        WsError::Protocol(_) => Ending::Close(CloseCode::Protocol, "protocol error"),
        WsError::Io(error) => match gate::refusal(&error) {
            Some(Refused::Budget) => {
                metrics.inbound_refused();
                Ending::Close(
                    CloseCode::Again,
                    "server busy: too many large messages at once",
                )
            }
            Some(Refused::Protocol(reason)) => Ending::Close(CloseCode::Protocol, reason),
            None => Ending::Gone,
        },
        _ => Ending::Gone,
    }
}
