//! A kept-alive connection that sends raw bytes and reads responses one at a time, for tests
//! of the exact bytes, pipelining and closes.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Response;
use crate::wait::WAIT;

pub struct Connection {
    stream: TcpStream,
    /// Read but not yet taken as a response.
    buffer: Vec<u8>,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Connection {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        Connection {
            stream,
            buffer: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write request");
    }

    /// One read into the buffer; 0 on end of stream or a reset.
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("no bytes and no close within WAIT")
        {
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                n
            }
            Err(_) => 0,
        }
    }

    /// The next response head, taken out of the buffer.
    pub async fn head(&mut self) -> Response {
        loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buffer.drain(..end + 4).collect();
                let head = String::from_utf8(head).expect("UTF-8 head");
                return Response::from_head(head).unwrap_or_else(|error| panic!("{error}"));
            }
            if self.fill().await == 0 {
                panic!(
                    "closed before a complete head: {:?}",
                    String::from_utf8_lossy(&self.buffer)
                );
            }
        }
    }

    /// The next response, its body framed by Content-Length (none when `head_only`, the
    /// answer to HEAD).
    pub async fn response(&mut self, head_only: bool) -> Response {
        let mut response = self.head().await;
        let length = if head_only {
            0
        } else {
            response
                .content_length()
                .expect("a kept-alive response needs a Content-Length")
        };
        while self.buffer.len() < length {
            if self.fill().await == 0 {
                panic!("closed inside a body of {length} bytes");
            }
        }
        response.body = self.buffer.drain(..length).collect();
        response
    }

    /// Everything left until the server closes; fails if it stays open past `WAIT`.
    pub async fn rest(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buffer)
    }

    /// The whole response of a connection the server closes after answering; its body must
    /// match its Content-Length.
    pub async fn closing_response(&mut self) -> Response {
        let bytes = self.rest().await;
        let response = Response::parse(&bytes).unwrap_or_else(|error| panic!("{error}"));
        if let Some(length) = response.content_length() {
            assert_eq!(response.body.len(), length, "{response:?}");
        }
        response
    }

    pub async fn expect_closed_silently(&mut self) {
        let rest = self.rest().await;
        assert!(
            rest.is_empty(),
            "expected a silent close, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}
