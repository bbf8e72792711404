//! One WebSocket: inbound frames, the room feed, heartbeat and shutdown, all in one `select!`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior, interval_at, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::broker::{Delivery, Membership, Replay, Resume, Unavailable};
use crate::config::{Config, LogLevel};
use crate::http::{Status, Target, Upgrade, error_response};
use crate::log;
use crate::metrics::Metrics;
use crate::protocol::{self, CLOSE_SLOW_READER, ChatParts};
use crate::shared::Shared;
use crate::shutdown::Shutdown;

/// How long to wait for the peer's close frame after sending ours.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Frames written per flush, so one busy room cannot starve the rest of the loop.
const MAX_BATCH: usize = 64;

type Socket = WebSocketStream<TcpStream>;

/// Runs an upgraded connection to its end.
pub async fn run(stream: TcpStream, upgrade: Upgrade, shared: &Shared, shutdown: Shutdown) {
    // The handshake's state is freed before the long-lived part starts: at thousands of idle
    // connections, what a session keeps allocated is what the server costs.
    let opened = Box::pin(handshake(stream, upgrade, shared)).await;
    shared.metrics.websocket_opened();
    match opened {
        Some(Opened::Chat(session)) => Box::pin(session.run(shutdown)).await,
        Some(Opened::Echo(socket)) => Box::pin(echo(socket, shared, shutdown)).await,
        None => {}
    }
    shared.metrics.websocket_closed();
}

enum Opened<'a> {
    Chat(ChatSession<'a>),
    Echo(Socket),
}

/// Joins the room (answering 503 if the broker is away), then completes the upgrade.
async fn handshake<'a>(
    mut stream: TcpStream,
    upgrade: Upgrade,
    shared: &'a Shared,
) -> Option<Opened<'a>> {
    let response = upgrade.response();
    let Upgrade {
        target,
        extended,
        leftover,
        ..
    } = upgrade;
    let Target::Chat { room, since, epoch } = target else {
        stream.write_all(&response).await.ok()?;
        return Some(Opened::Echo(open(stream, leftover, &shared.config).await));
    };
    let resume = since.map(|since| Resume { since, epoch });
    let extended = extended || resume.is_some();
    let Ok(membership) = shared.broker.join(&room, resume).await else {
        let refusal = error_response(Status::ServiceUnavailable, "broker unavailable");
        let _ = stream.write_all(&refusal).await;
        return None;
    };
    stream.write_all(&response).await.ok()?;
    let socket = open(stream, leftover, &shared.config).await;
    Some(Opened::Chat(ChatSession {
        socket,
        membership,
        room,
        extended,
        shared,
        last_heard: Instant::now(),
    }))
}

async fn open(stream: TcpStream, leftover: Vec<u8>, config: &Config) -> Socket {
    let _ = stream.set_nodelay(true);
    // Small buffers: most chat connections are idle most of the time. The write buffer's
    // cap must hold the largest message the echo endpoint may send back, with room to spare.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size((4 << 20).max(2 * config.max_message_bytes))
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes));
    WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(ws_config)).await
}

/// Why a chat session ends.
enum Ending {
    /// The peer closed, or the connection broke.
    Gone,
    Shutdown,
    /// The peer sent nothing, not even a pong, for the peer timeout.
    Silent,
    /// Close with this code and reason.
    Close(CloseCode, &'static str),
}

struct ChatSession<'a> {
    socket: Socket,
    membership: Membership,
    room: String,
    extended: bool,
    shared: &'a Shared,
    last_heard: Instant,
}

impl ChatSession<'_> {
    async fn run(mut self, mut shutdown: Shutdown) {
        if self.extended && self.greet().await.is_err() {
            return;
        }
        let heartbeat = self.shared.config.heartbeat;
        let mut ticks = interval_at(Instant::now() + heartbeat, heartbeat);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let ending = loop {
            let step = tokio::select! {
                _ = shutdown.signalled() => Some(Ending::Shutdown),
                // Boxed, like the closing paths below: rare or short-lived, they would
                // otherwise make every idle session as large as the largest of them.
                inbound = self.socket.next() => Box::pin(self.on_inbound(inbound)).await,
                frame = self.membership.feed.recv() => match frame {
                    Some(frame) => self.deliver(frame).await,
                    None => Some(Ending::Close(CloseCode::from(CLOSE_SLOW_READER), "too slow: resume with since")),
                },
                _ = ticks.tick() => self.on_tick().await,
            };
            if let Some(ending) = step {
                break ending;
            }
        };
        if log::enabled(LogLevel::Debug) {
            let why = match &ending {
                Ending::Gone => "peer closed or went away",
                Ending::Shutdown => "server shutdown",
                Ending::Silent => "peer silent past the timeout",
                Ending::Close(_, reason) => reason,
            };
            log::debug(
                "websocket closing",
                json!({ "room": self.room, "why": why }),
            );
        }
        match ending {
            Ending::Gone => {}
            Ending::Silent => {
                let _ = timeout(Duration::from_secs(1), self.socket.close(None)).await;
            }
            Ending::Shutdown => {
                // Deliver what was published before the close, then keep taking the peer's
                // in-flight messages until it answers the close.
                while let Ok(delivery) = self.membership.feed.try_recv() {
                    if self.queue(delivery).await.is_err() {
                        return;
                    }
                }
                Box::pin(self.close_and_wait(CloseCode::Restart, "server restart")).await;
            }
            Ending::Close(code, reason) => Box::pin(self.close_and_wait(code, reason)).await,
        }
    }

    /// The welcome frame, then what the resume asked for.
    async fn greet(&mut self) -> Result<(), WsError> {
        let membership = &mut self.membership;
        let welcome = protocol::welcome_frame(&self.room, &membership.epoch, membership.seq);
        self.socket.feed(Message::text(welcome)).await?;
        let frames = match std::mem::take(&mut membership.replay) {
            Replay::Nothing => Vec::new(),
            Replay::Messages(frames) => frames,
            Replay::Reset(reason, frames) => {
                let reset = protocol::reset_frame(&membership.epoch, membership.seq, reason);
                self.socket.feed(Message::text(reset)).await?;
                frames
            }
        };
        for frame in frames {
            self.socket.feed(Message::Text(frame)).await?;
        }
        self.write_flush().await
    }

    async fn on_inbound(&mut self, inbound: Option<Result<Message, WsError>>) -> Option<Ending> {
        self.last_heard = Instant::now();
        let message = match inbound {
            None => return Some(Ending::Gone),
            Some(Ok(message)) => message,
            Some(Err(error)) => return Some(ending_for(error, &self.shared.metrics)),
        };
        match message {
            Message::Text(text) => self.on_text(text.as_str()).await,
            Message::Binary(_) => {
                self.shared.metrics.invalid_frame();
                Some(Ending::Close(
                    CloseCode::Unsupported,
                    "binary frames are not accepted",
                ))
            }
            // tungstenite answers pings itself and replies to a close before returning it.
            Message::Close(_) => Some(self.finish_close().await),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
        }
    }

    async fn on_text(&mut self, text: &str) -> Option<Ending> {
        let metrics = &self.shared.metrics;
        metrics.message_received();
        let error = match protocol::parse_chat(text) {
            Ok(message) => match self
                .membership
                .publish(ChatParts::new(&message, None, protocol::now_ms()))
                .await
            {
                Ok(()) => return None,
                Err(Unavailable) => {
                    metrics.publish_refused();
                    if !self.extended {
                        return Some(Ending::Close(
                            CloseCode::Again,
                            "broker unavailable: message not sent",
                        ));
                    }
                    protocol::error_frame("unavailable", "broker unavailable: message not sent")
                }
            },
            Err(invalid) => {
                metrics.invalid_frame();
                if !self.extended {
                    return Some(Ending::Close(CloseCode::Invalid, invalid.detail()));
                }
                protocol::error_frame(invalid.code(), invalid.detail())
            }
        };
        match self.write_now(Message::text(error)).await {
            Ok(()) => None,
            Err(_) => Some(Ending::Gone),
        }
    }

    /// Writes `first` and whatever else is already queued, then flushes once.
    async fn deliver(&mut self, first: Delivery) -> Option<Ending> {
        if self.queue(first).await.is_err() {
            return Some(Ending::Gone);
        }
        for _ in 1..MAX_BATCH {
            let Ok(delivery) = self.membership.feed.try_recv() else {
                break;
            };
            if self.queue(delivery).await.is_err() {
                return Some(Ending::Gone);
            }
        }
        match self.write_flush().await {
            Ok(()) => None,
            Err(_) => Some(Ending::Gone),
        }
    }

    /// Buffers one delivery without flushing; reset notices only reach extended clients.
    async fn queue(&mut self, delivery: Delivery) -> Result<(), WsError> {
        match delivery {
            Delivery::Chat(frame) => self.socket.feed(Message::Text(frame)).await,
            Delivery::Reset(frame) if self.extended => self.socket.feed(Message::Text(frame)).await,
            Delivery::Reset(_) => Ok(()),
        }
    }

    async fn on_tick(&mut self) -> Option<Ending> {
        let idle = self.last_heard.elapsed();
        if idle >= self.shared.config.peer_timeout {
            return Some(Ending::Silent);
        }
        if idle >= self.shared.config.heartbeat
            && self
                .write_now(Message::Ping(Default::default()))
                .await
                .is_err()
        {
            return Some(Ending::Gone);
        }
        None
    }

    async fn write_now(&mut self, message: Message) -> Result<(), WsError> {
        self.socket.feed(message).await?;
        self.write_flush().await
    }

    /// Flushes under the peer timeout: a peer that stops reading cannot hold the session.
    async fn write_flush(&mut self) -> Result<(), WsError> {
        match timeout(self.shared.config.peer_timeout, self.socket.flush()).await {
            Ok(result) => result,
            Err(_) => Err(WsError::Io(std::io::ErrorKind::TimedOut.into())),
        }
    }

    /// Sends our close and waits for the peer's. On a restart, chat messages the peer sent
    /// before it saw our close are still published, so a deploy loses none of them.
    async fn close_and_wait(&mut self, code: CloseCode, reason: &'static str) {
        let publish_in_flight = code == CloseCode::Restart;
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if timeout(CLOSE_WAIT, self.socket.close(Some(frame)))
            .await
            .is_err()
        {
            return;
        }
        let _ = timeout(CLOSE_WAIT, async {
            while let Some(Ok(message)) = self.socket.next().await {
                if let Message::Text(text) = message
                    && publish_in_flight
                    && let Ok(chat) = protocol::parse_chat(text.as_str())
                {
                    self.shared.metrics.message_received();
                    let chat = ChatParts::new(&chat, None, protocol::now_ms());
                    let _ = self.membership.publish(chat).await;
                }
            }
        })
        .await;
    }

    /// After the peer's close: let tungstenite send the reply and end the stream.
    async fn finish_close(&mut self) -> Ending {
        let _ = timeout(CLOSE_WAIT, async {
            while let Some(Ok(_)) = self.socket.next().await {}
        })
        .await;
        Ending::Gone
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
        _ => Ending::Gone,
    }
}

/// The conformance endpoint: every data message comes straight back.
async fn echo(mut socket: Socket, shared: &Shared, mut shutdown: Shutdown) {
    loop {
        let inbound = tokio::select! {
            _ = shutdown.signalled() => {
                let frame = CloseFrame { code: CloseCode::Restart, reason: "server restart".into() };
                let _ = timeout(CLOSE_WAIT, socket.close(Some(frame))).await;
                return;
            }
            inbound = socket.next() => inbound,
        };
        let reply = match inbound {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
            Some(Ok(Message::Close(_))) => {
                let _ = timeout(CLOSE_WAIT, async {
                    while let Some(Ok(_)) = socket.next().await {}
                })
                .await;
                return;
            }
            Some(Ok(_)) => continue,
            None => return,
            Some(Err(error)) => {
                if let Ending::Close(code, reason) = ending_for(error, &shared.metrics) {
                    let frame = CloseFrame {
                        code,
                        reason: reason.into(),
                    };
                    let _ = timeout(CLOSE_WAIT, socket.close(Some(frame))).await;
                }
                return;
            }
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}
