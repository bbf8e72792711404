//! Writing to a WebSocket: every write under a deadline, and large frames in fragments.
//!
//! A peer that stops reading must not hold a session: each write that makes no progress
//! within the peer timeout ends it. Frames past [`OUT_PIECE`] bytes go out as fragments, so
//! tungstenite's write buffer, which keeps its largest size for good, stays small.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::gate::Gated;

pub type Socket = WebSocketStream<Gated<TcpStream>>;

/// Bytes tungstenite gathers before it writes to the socket: a batch of small frames goes
/// out in a write or two, and a stuck peer holds at most this plus one fragment.
const WRITE_BUFFER: usize = 4096;
/// The largest fragment written.
pub const OUT_PIECE: usize = 4096;

/// How long to wait for the peer's close frame after sending ours.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub fn config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + 2 * (OUT_PIECE + 16))
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// `op`, failing as a timed-out write if it does not finish within `limit`.
pub async fn within<T>(
    limit: Duration,
    op: impl Future<Output = Result<T, WsError>>,
) -> Result<T, WsError> {
    let mut op = pin!(op);
    // Most writes finish at once, into the socket's buffer: only one that has to wait
    // starts a timer (boxed, so a waiting session does not carry one inline).
    if let Poll::Ready(result) = poll_fn(|cx| Poll::Ready(op.as_mut().poll(cx))).await {
        return result;
    }
    match Box::pin(timeout(limit, op)).await {
        Ok(result) => result,
        Err(_) => Err(WsError::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

/// Queues a text frame without flushing; a large one as fragments. The caller bounds it.
pub async fn feed_frame(socket: &mut Socket, text: Utf8Bytes) -> Result<(), WsError> {
    if text.len() <= OUT_PIECE {
        return socket.feed(Message::Text(text)).await;
    }
    // Boxed: rare, and inline it would size every session that waits to deliver.
    Box::pin(feed_fragments(socket, text)).await
}

async fn feed_fragments(socket: &mut Socket, text: Utf8Bytes) -> Result<(), WsError> {
    let bytes: Bytes = text.into();
    let mut start = 0;
    while start < bytes.len() {
        let end = (start + OUT_PIECE).min(bytes.len());
        let opcode = if start == 0 {
            Data::Text
        } else {
            Data::Continue
        };
        let fragment = Frame::message(
            bytes.slice(start..end),
            OpCode::Data(opcode),
            end == bytes.len(),
        );
        socket.feed(Message::Frame(fragment)).await?;
        start = end;
    }
    Ok(())
}

/// Writes one message and flushes it, all under one deadline.
pub async fn send_message(
    socket: &mut Socket,
    limit: Duration,
    message: Message,
) -> Result<(), WsError> {
    within(limit, async {
        match message {
            Message::Text(text) => feed_frame(socket, text).await?,
            Message::Binary(bytes) => feed_binary(socket, bytes).await?,
            other => socket.feed(other).await?,
        }
        socket.flush().await
    })
    .await
}

/// Queues a binary message (echo only) the same way. The caller bounds it.
async fn feed_binary(socket: &mut Socket, bytes: Bytes) -> Result<(), WsError> {
    let mut start = 0;
    loop {
        let end = (start + OUT_PIECE).min(bytes.len());
        let opcode = if start == 0 {
            Data::Binary
        } else {
            Data::Continue
        };
        let fragment = Frame::message(
            bytes.slice(start..end),
            OpCode::Data(opcode),
            end == bytes.len(),
        );
        socket.feed(Message::Frame(fragment)).await?;
        start = end;
        if start >= bytes.len() {
            return Ok(());
        }
    }
}

/// Sends a close frame, bounded like every write.
pub async fn send_close(
    socket: &mut Socket,
    limit: Duration,
    frame: Option<CloseFrame>,
) -> Result<(), WsError> {
    within(limit.min(CLOSE_WAIT), socket.close(frame)).await
}
