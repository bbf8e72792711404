//! The inbound gate refuses, at their header, frames no server may accept: a reserved bit
//! without an extension, an unmasked frame, a reserved opcode, a control frame over 125 bytes
//! or not final. Each gets close 1002, and the room's other members carry on.

use std::net::SocketAddr;

use testkit::WAIT;
use testkit::ws::{chat, connect, recv_json, send_chat};
use testkit::{Endpoint, InProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{good_upgrade, read_head, shared_machine};

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A client frame from its first byte (FIN, RSV, opcode), masked unless `masked` is false.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    if payload.len() < 126 {
        out.push(mask_bit | payload.len() as u8);
    } else {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A chat WebSocket over a raw stream: the 101 read, the frames up to us.
async fn raw_websocket(addr: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = good_upgrade("/ws/chat/gate/", "");
    stream.write_all(request.as_bytes()).await.unwrap();
    let (response, rest) = read_head(&mut stream).await;
    assert_eq!(response.status, 101, "{response:?}");
    (stream, rest)
}

/// The code of the server's close frame, skipping any other frame before it; `None` if the
/// connection ends without one.
async fn close_code(stream: &mut TcpStream, mut bytes: Vec<u8>) -> Option<u16> {
    let mut chunk = [0u8; 4096];
    loop {
        while bytes.len() >= 2 {
            let (opcode, short) = (bytes[0] & 0x0f, (bytes[1] & 0x7f) as usize);
            let (length, at) = match short {
                126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                127 if bytes.len() >= 10 => {
                    let length = u64::from_be_bytes(bytes[2..10].try_into().unwrap());
                    (length as usize, 10)
                }
                126 | 127 => break,
                _ => (short, 2),
            };
            if bytes.len() < at + length {
                break;
            }
            if opcode == 8 {
                let payload = &bytes[at..at + length];
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
            bytes.drain(..at + length);
        }
        let read = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("no close within WAIT");
        match read {
            Ok(0) | Err(_) => return None,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn frames_no_server_accepts_are_refused_with_1002_and_others_carry_on() {
    let _machine = shared_machine().await;
    let server = InProcess::start(&[]);
    let mut bystander = connect(&server.ws_url("/ws/chat/gate/"), false).await;
    let text = br#"{"message":"x"}"#;
    let cases = [
        ("RSV1 on a text frame", frame(0x80 | 0x40 | 0x1, text, true)),
        ("RSV3 on a ping", frame(0x80 | 0x10 | 0x9, b"", true)),
        ("an unmasked text frame", frame(0x81, text, false)),
        ("an unmasked close", frame(0x88, &[0x03, 0xe8], false)),
        ("a ping of 126 bytes", frame(0x89, &[b'p'; 126], true)),
        ("a fragmented ping", frame(0x09, b"p", true)),
        ("a fragmented close", frame(0x08, &[0x03, 0xe8], true)),
        ("reserved data opcode 3", frame(0x83, text, true)),
        ("reserved control opcode 11", frame(0x8b, b"", true)),
    ];
    for (seq, (what, bytes)) in (1u64..).zip(cases) {
        let (mut stream, rest) = raw_websocket(server.addr()).await;
        stream.write_all(&bytes).await.unwrap();
        assert_eq!(close_code(&mut stream, rest).await, Some(1002), "{what}");
        send_chat(&mut bystander, what).await;
        assert_eq!(
            chat(&recv_json(&mut bystander).await),
            (what.to_string(), seq)
        );
    }
    // A well-formed client on the same raw path is served, so the refusals were the frames'.
    let (mut stream, _) = raw_websocket(server.addr()).await;
    stream.write_all(&frame(0x81, text, true)).await.unwrap();
    let mut chunk = [0u8; 256];
    let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(chunk[0], 0x81, "a text frame back");
    assert!(String::from_utf8_lossy(&chunk[..n]).contains("\"message\":\"x\""));
}
