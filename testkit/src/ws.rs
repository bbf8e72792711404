//! WebSocket clients of the chat endpoint: connecting (plain, extended, with headers, tuned
//! for load) and reading frames the way the tests expect them.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::wait::WAIT;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// A client on a bare TcpStream, as the benchmarks open thousands of them.
pub type TunedWs = WebSocketStream<TcpStream>;

/// The subprotocol that opts into the extended protocol.
pub const EXTENDED: (&str, &str) = ("Sec-WebSocket-Protocol", "roomcast.v1");

/// Connects with extra request headers within `limit`; the error as text.
pub async fn try_connect(
    url: &str,
    headers: &[(&str, &str)],
    limit: Duration,
) -> Result<Ws, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_str(value).map_err(|e| e.to_string())?;
        request.headers_mut().insert(name, value);
    }
    match tokio::time::timeout(limit, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}

/// Connects with extra request headers, failing the test if it cannot.
pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> Ws {
    try_connect(url, headers, WAIT)
        .await
        .unwrap_or_else(|error| panic!("connect to {url} failed: {error}"))
}

/// A chat client; `extended` offers the `roomcast.v1` subprotocol.
pub async fn connect(url: &str, extended: bool) -> Ws {
    let headers: &[(&str, &str)] = if extended { &[EXTENDED] } else { &[] };
    connect_with_headers(url, headers).await
}

/// A client with its own buffer sizes and Nagle off, sending `headers`, within 10 s; for
/// benchmarks.
pub async fn connect_tuned(
    addr: SocketAddr,
    path: &str,
    config: WebSocketConfig,
    headers: &[(&str, &str)],
) -> Result<TunedWs, String> {
    let url = format!("ws://{addr}{path}");
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_str(value).map_err(|e| e.to_string())?;
        request.headers_mut().insert(name, value);
    }
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| format!("handshake {url}: {e}"))?;
        Ok(ws)
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| format!("{url}: no handshake within 10 s"))?
}

pub async fn send_chat(ws: &mut Ws, message: &str) {
    let frame = serde_json::json!({ "message": message }).to_string();
    ws.send(Message::text(frame)).await.unwrap();
}

/// The next text frame as JSON; fails on anything else.
pub async fn recv_json(ws: &mut Ws) -> Value {
    match next_message(ws).await {
        Some(Ok(Message::Text(text))) => serde_json::from_str(text.as_str()).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The next text frame as JSON that is not about presence (`join`, `leave`, `members`):
/// for tests about messages in rooms where members come and go.
pub async fn recv_unless_presence(ws: &mut Ws) -> Value {
    loop {
        let frame = recv_json(ws).await;
        if !matches!(frame["type"].as_str(), Some("join" | "leave" | "members")) {
            return frame;
        }
    }
}

/// The next message that is not a ping or pong, within [`WAIT`].
pub async fn next_message(ws: &mut Ws) -> Option<Result<Message, WsError>> {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("no message in time")
}

/// Reads until the close frame and returns its code and reason.
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match next_message(ws).await {
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                return (code.into(), reason.to_string());
            }
            Some(Ok(Message::Text(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// A chat frame as (message, seq); fails on a notice.
pub fn chat(frame: &Value) -> (String, u64) {
    assert!(frame.get("type").is_none(), "not a chat frame: {frame}");
    (
        frame["message"].as_str().unwrap().to_string(),
        frame["seq"].as_u64().unwrap(),
    )
}
