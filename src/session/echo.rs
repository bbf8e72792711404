//! The conformance endpoint (`/ws/echo`, off unless `ROOMCAST_ECHO=1`): every data message
//! comes straight back, under the same clock and write deadlines as a chat session.

use futures_util::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::clock::{Due, PeerClock};
use super::outbound::{CLOSE_WAIT, Socket, send_close, send_message, within};
use super::{Ending, ending_for};
use crate::shared::Shared;
use crate::shutdown::Shutdown;

pub(super) async fn run(mut socket: Socket, shared: &Shared, mut shutdown: Shutdown) {
    let mut clock = PeerClock::new(shared.config.heartbeat, shared.config.peer_timeout);
    let limit = clock.timeout();
    let ending = loop {
        let inbound = tokio::select! {
            _ = shutdown.signalled() => break Ending::Close(CloseCode::Restart, "server restart"),
            inbound = socket.next() => inbound,
            _ = clock.due() => match clock.check(socket.get_ref().busy_since()) {
                Due::Nothing => continue,
                Due::Silent | Due::Expired => break Ending::Silent,
                Due::Unfinished => break Ending::Close(CloseCode::Policy, "message not completed within the peer timeout"),
                Due::Ping => {
                    if within(limit, socket.send(Message::Ping(Default::default()))).await.is_err() {
                        break Ending::Gone;
                    }
                    continue;
                }
            },
        };
        clock.heard();
        let reply = match inbound {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
            Some(Ok(Message::Close(_))) => {
                let _ = timeout(CLOSE_WAIT.min(limit), async {
                    while let Some(Ok(_)) = socket.next().await {}
                })
                .await;
                break Ending::Gone;
            }
            Some(Ok(_)) => continue,
            None => break Ending::Gone,
            Some(Err(error)) => break ending_for(error, &shared.metrics),
        };
        if send_message(&mut socket, limit, reply).await.is_err() {
            break Ending::Gone;
        }
    };
    let frame = match ending {
        Ending::Close(code, reason) => Some(CloseFrame {
            code,
            reason: reason.into(),
        }),
        Ending::Silent => None,
        Ending::Gone | Ending::Shutdown => return,
    };
    let _ = send_close(&mut socket, limit, frame).await;
}
