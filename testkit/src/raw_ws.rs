//! A WebSocket client on a bare socket, byte by byte: it sends any frame whole or in part
//! (headers that announce more than follows, control frames no server should take), never
//! answers a ping unless told to, and can shrink its receive buffer so a server's writes
//! stall when it stops reading.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::http::Response;
use crate::wait::WAIT;

pub const TEXT: u8 = 0x1;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The masking key of every frame sent; any key is valid, a fixed one keeps frames readable.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A frame header as a client sends it: masked, announcing `length` payload bytes.
pub fn header(fin: bool, opcode: u8, length: usize) -> Vec<u8> {
    // The 7-bit length, or 126 or 127 and the length in the next 2 or 8 bytes.
    let (short, extended) = match length {
        n if n < 126 => (n as u8, Vec::new()),
        n if n <= u16::MAX as usize => (126, (n as u16).to_be_bytes().to_vec()),
        n => (127, (n as u64).to_be_bytes().to_vec()),
    };
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode, 0x80 | short];
    out.extend(extended);
    out.extend_from_slice(&MASK);
    out
}

/// Payload bytes masked as the `offset`-th byte onwards of a frame's payload.
pub fn masked(payload: &[u8], offset: usize) -> Vec<u8> {
    payload
        .iter()
        .enumerate()
        .map(|(i, byte)| byte ^ MASK[(offset + i) % 4])
        .collect()
}

/// A whole client frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = header(fin, opcode, payload.len());
    out.extend(masked(payload, 0));
    out
}

/// A chat message as the JSON text a client sends, padded to exactly `bytes` bytes.
pub fn chat_text(bytes: usize) -> String {
    const ENVELOPE: usize = r#"{"message":""}"#.len();
    let body = "x".repeat(bytes.saturating_sub(ENVELOPE));
    format!(r#"{{"message":"{body}"}}"#)
}

/// One frame from the server (unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A close frame's status code, if it carries one.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// What a read saw.
#[derive(Debug)]
pub enum Event {
    Frame(Frame),
    /// The server closed its side (end of stream).
    Closed,
    /// The connection was reset or broke.
    Broken(io::Error),
    /// Nothing within the time asked for.
    Quiet,
}

pub struct RawWs {
    stream: TcpStream,
    /// Bytes read and not yet taken as a frame.
    buffer: Vec<u8>,
}

/// How to open one: the request path and headers, and the socket's receive buffer.
#[derive(Debug, Clone, Default)]
pub struct Open<'a> {
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    /// SO_RCVBUF before connecting; `None` leaves the kernel's default.
    pub receive_buffer: Option<u32>,
}

impl<'a> Open<'a> {
    pub fn path(path: &'a str) -> Open<'a> {
        Open {
            path,
            ..Open::default()
        }
    }

    pub fn headers(self, headers: &'a [(&'a str, &'a str)]) -> Open<'a> {
        Open { headers, ..self }
    }

    pub fn receive_buffer(self, bytes: u32) -> Open<'a> {
        Open {
            receive_buffer: Some(bytes),
            ..self
        }
    }
}

/// A TCP connection to `addr`, its receive buffer set first when asked, within [`WAIT`].
pub async fn tcp(addr: SocketAddr, receive_buffer: Option<u32>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(bytes) = receive_buffer {
        socket.set_recv_buffer_size(bytes)?;
    }
    match tokio::time::timeout(WAIT, socket.connect(addr)).await {
        Ok(connected) => connected,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

impl RawWs {
    /// Upgrades a fresh connection: `Ok(Err(response))` when the server answers anything
    /// but 101 (the whole response, up to its close).
    pub async fn open(addr: SocketAddr, open: Open<'_>) -> io::Result<Result<RawWs, Response>> {
        let mut stream = tcp(addr, open.receive_buffer).await?;
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            open.path
        );
        for (name, value) in open.headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut buffer = Vec::new();
        let reading = async {
            loop {
                if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    return Ok(end + 4);
                }
                let mut chunk = [0u8; 2048];
                match stream.read(&mut chunk).await? {
                    0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                    n => buffer.extend_from_slice(&chunk[..n]),
                }
            }
        };
        let end = tokio::time::timeout(WAIT, reading)
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
        let mut response = Response::from_head(head)?;
        if response.status == 101 {
            buffer.drain(..end);
            return Ok(Ok(RawWs { stream, buffer }));
        }
        // A refusal closes the connection: its body is what follows, until the end.
        let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut buffer)).await;
        response.body = buffer[end..].to_vec();
        Ok(Err(response))
    }

    /// [`open`](RawWs::open), failing the test unless the upgrade succeeds.
    pub async fn connect(addr: SocketAddr, open: Open<'_>) -> RawWs {
        let path = open.path.to_string();
        match RawWs::open(addr, open).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(response)) => panic!("upgrade to {path} refused: {response:?}"),
            Err(error) => panic!("upgrade to {path} failed: {error}"),
        }
    }

    /// Writes `bytes` as they are: a frame, a part of one, several; a server that stops
    /// reading makes it fail after [`WAIT`].
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        tokio::time::timeout(WAIT, self.stream.write_all(bytes))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }

    pub async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.send_raw(&frame(fin, opcode, payload)).await
    }

    /// The next frame, or what else happened, within `limit`.
    pub async fn next_event(&mut self, limit: Duration) -> Event {
        let reading = async {
            loop {
                if let Some((frame, used)) = parse(&self.buffer) {
                    self.buffer.drain(..used);
                    return Event::Frame(frame);
                }
                let mut chunk = [0u8; 16 * 1024];
                match self.stream.read(&mut chunk).await {
                    Ok(0) => return Event::Closed,
                    Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                    Err(error) => return Event::Broken(error),
                }
            }
        };
        tokio::time::timeout(limit, reading)
            .await
            .unwrap_or(Event::Quiet)
    }

    /// Reads until a close frame, answering pings; its code (`None`: a close without one),
    /// or what ended the connection instead.
    pub async fn expect_close(&mut self, limit: Duration) -> Result<Option<u16>, Event> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Frame(frame) if frame.opcode == CLOSE => return Ok(frame.close_code()),
                Event::Frame(frame) if frame.opcode == PING => {
                    let _ = self.send(true, PONG, &frame.payload).await;
                }
                Event::Frame(_) => {}
                other => return Err(other),
            }
        }
    }

    /// Reads and drops everything until the server ends the connection (end of stream or
    /// reset); false if it is still open after `limit`.
    pub async fn ends_within(&mut self, limit: Duration) -> bool {
        let draining = async {
            let mut chunk = [0u8; 64 * 1024];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(limit, draining).await.is_ok()
    }
}

/// One whole frame at the start of `bytes`, and how many bytes it took.
fn parse(bytes: &[u8]) -> Option<(Frame, usize)> {
    let (first, second) = (*bytes.first()?, *bytes.get(1)?);
    let (length, mut at) = match second & 0x7f {
        126 => (
            u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        short => (short as usize, 2),
    };
    let mask = if second & 0x80 != 0 {
        let key: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(key)
    } else {
        None
    };
    let mut payload = bytes.get(at..at + length)?.to_vec();
    if let Some(key) = mask {
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= key[i % 4];
        }
    }
    let frame = Frame {
        fin: first & 0x80 != 0,
        opcode: first & 0x0f,
        payload,
    };
    Some((frame, at + length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_parser() {
        for size in [0, 5, 125, 126, 70_000] {
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let bytes = frame(false, TEXT, &payload);
            let (parsed, used) = parse(&bytes).expect("a whole frame");
            assert_eq!(used, bytes.len());
            assert_eq!((parsed.fin, parsed.opcode), (false, TEXT));
            assert_eq!(parsed.payload, payload);
            assert!(parse(&bytes[..bytes.len() - 1]).is_none() || size == 0);
        }
        assert_eq!(chat_text(100).len(), 100);
        let close = Frame {
            fin: true,
            opcode: CLOSE,
            payload: vec![0x03, 0xf0, b'x'],
        };
        assert_eq!(close.close_code(), Some(1008));
    }
}
