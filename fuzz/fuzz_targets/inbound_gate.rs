//! The inbound gate on any bytes, split any way between the handshake's leftover and the
//! socket, read in any chunk sizes: what it hands tungstenite is exactly what a simple model
//! of it expects (every frame as sent, or a large data frame re-cut into masked fragments of
//! at most `PIECE` bytes with the payload untouched), and it refuses exactly the frames no
//! server accepts, at their header. The budget is whole again when the gate is dropped.
#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use roomcast::limits::InboundBudget;
use roomcast::session::gate::{Gated, PIECE, Refused, refusal};
use tokio::io::{AsyncRead, ReadBuf};

/// A socket that hands out `chunk` bytes per read.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// What the gate should hand on for `input`, and whether it should refuse a frame.
fn model(input: &[u8], max_frame: u64) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let rest = &input[at..];
        if rest.len() < 2 {
            return (out, false);
        }
        let extended = match rest[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let masked = rest[1] & 0x80 != 0;
        let size = 2 + extended + if masked { 4 } else { 0 };
        if rest.len() < size {
            return (out, false);
        }
        let header = &rest[..size];
        let (fin, rsv, opcode) = (header[0] & 0x80 != 0, header[0] & 0x70, header[0] & 0x0f);
        let length = match extended {
            2 => u16::from_be_bytes([header[2], header[3]]) as u64,
            8 => u64::from_be_bytes(header[2..10].try_into().unwrap()),
            _ => (header[1] & 0x7f) as u64,
        };
        let control = opcode >= 8;
        if rsv != 0
            || !masked
            || matches!(opcode, 3..=7 | 11..=15)
            || control && (!fin || length > 125)
        {
            return (out, true);
        }
        let payload_start = at + size;
        let available = (input.len() - payload_start) as u64;
        let present = length.min(available) as usize;
        let payload = &input[payload_start..payload_start + present];
        if !control && length > PIECE as u64 && length <= max_frame {
            let mask = &header[size - 4..];
            let mut offset = 0u64;
            loop {
                let piece = (length - offset).min(PIECE as u64);
                let last = offset + piece == length;
                let first = offset == 0;
                out.push(if last && fin { 0x80 } else { 0 } | if first { opcode } else { 0 });
                if piece < 126 {
                    out.push(0x80 | piece as u8);
                } else {
                    out.push(0x80 | 126);
                    out.extend_from_slice(&(piece as u16).to_be_bytes());
                }
                out.extend_from_slice(mask);
                let from = offset.min(present as u64) as usize;
                let to = (offset + piece).min(present as u64) as usize;
                out.extend_from_slice(&payload[from..to]);
                offset += piece;
                // The next piece's header goes out as soon as this piece is complete.
                if last || (to as u64) < offset {
                    break;
                }
            }
        } else {
            out.extend_from_slice(header);
            out.extend_from_slice(payload);
        }
        if (present as u64) < length {
            return (out, false);
        }
        at = payload_start + present;
    }
}

fuzz_target!(|data: &[u8]| {
    let [max, split, chunk, read_size, input @ ..] = data else {
        return;
    };
    let max_frame = 16 + *max as u64 * 64;
    let split = (*split as usize * 16).min(input.len());
    let (leftover, socket) = input.split_at(split);
    let budget = Arc::new(InboundBudget::new(usize::MAX));
    let socket = Chunked {
        data: socket,
        chunk: *chunk as usize + 1,
    };
    let mut gate = Gated::new(
        socket,
        leftover.to_vec(),
        max_frame as usize,
        Arc::clone(&budget),
    );
    let mut out = Vec::new();
    let mut scratch = vec![0u8; *read_size as usize * 4 + 1];
    let mut context = Context::from_waker(Waker::noop());
    let mut refused = false;
    loop {
        let mut buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut gate).poll_read(&mut context, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
            Poll::Ready(Ok(())) => out.extend_from_slice(buf.filled()),
            Poll::Ready(Err(error)) => {
                assert!(
                    matches!(refusal(&error), Some(Refused::Protocol(_))),
                    "{error}"
                );
                refused = true;
                break;
            }
            Poll::Pending => panic!("an in-memory socket is never pending"),
        }
    }
    drop(gate);
    assert_eq!(budget.used(), 0, "the budget is given back");
    let (expected, should_refuse) = model(input, max_frame);
    assert_eq!(refused, should_refuse, "refusal");
    assert!(out == expected, "handed on {out:?}, expected {expected:?}");
});
