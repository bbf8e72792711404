//! The inbound gate: the socket's bytes on their way to tungstenite, frame by frame.
//!
//! tungstenite sizes its read buffer by the largest frame header it has seen and never
//! shrinks it, so one 64 KiB frame would cost a connection 64 KiB for good. The gate re-cuts
//! every large data frame into fragments ([`splitter`]), which tungstenite joins back into
//! the same message. On the way it sees where every message starts and ends, which gives the
//! session a deadline for finishing one, and it charges what a large message holds to the
//! process-wide inbound budget.

mod splitter;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::limits::InboundBudget;
use splitter::{Need, Splitter};
pub use splitter::{PIECE, Refused};

/// What a message may hold before it draws on the inbound budget.
pub const ALLOWANCE: usize = 2048;
/// Bytes read from the socket ahead of the frame being passed on.
const READ_AHEAD: usize = 512;

impl From<Refused> for io::Error {
    fn from(refused: Refused) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, refused)
    }
}

/// The socket as tungstenite reads it: through the gate.
pub struct Gated<S> {
    inner: S,
    splitter: Splitter,
    /// Bytes read ahead; empty (unallocated) between reads.
    ahead: Vec<u8>,
    ahead_at: usize,
    /// When the message (or frame) now half received started arriving.
    busy_since: Option<Instant>,
    budget: Arc<InboundBudget>,
    /// Taken from the budget for the current message.
    charged: usize,
}

impl<S> Gated<S> {
    /// `leftover`: bytes read with the HTTP head that already belong to the WebSocket.
    pub fn new(
        inner: S,
        leftover: Vec<u8>,
        max_frame: usize,
        budget: Arc<InboundBudget>,
    ) -> Gated<S> {
        Gated {
            inner,
            splitter: Splitter::new(max_frame),
            ahead: leftover,
            ahead_at: 0,
            busy_since: None,
            budget,
            charged: 0,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Since when a message (or a frame of one) has been arriving without being complete.
    pub fn busy_since(&self) -> Option<Instant> {
        self.busy_since
    }

    fn settle_message(&mut self) {
        if self.splitter.message_complete() {
            self.splitter.forget_message();
            self.budget.give_back(self.charged);
            self.charged = 0;
        }
        if self.splitter.is_idle() {
            self.busy_since = None;
        }
    }

    /// Charges what the message holds past the allowance; false when the budget is spent.
    fn charge(&mut self) -> bool {
        let over = self.splitter.message_bytes().saturating_sub(ALLOWANCE);
        if over > self.charged {
            if !self.budget.take(over - self.charged) {
                return false;
            }
            self.charged = over;
        }
        true
    }
}

impl<S> Drop for Gated<S> {
    fn drop(&mut self) {
        self.budget.give_back(self.charged);
    }
}

/// The gate's refusal behind a failed read, if that is what it was.
pub fn refusal(error: &io::Error) -> Option<Refused> {
    error.get_ref()?.downcast_ref::<Refused>().copied()
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // A rewritten header first.
            let pending = this.splitter.pending_header();
            if !pending.is_empty() {
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..n]);
                this.splitter.header_passed(n);
                if this.splitter.pending_header().is_empty() && !this.splitter.in_payload() {
                    this.settle_message();
                }
                return Poll::Ready(Ok(()));
            }
            let need = this.splitter.need();
            let available = this.ahead.len() - this.ahead_at;
            if available == 0 {
                // Large payloads go straight into tungstenite's buffer.
                if let Need::Payload(left) = need
                    && left >= READ_AHEAD
                {
                    let want = left.min(buf.remaining());
                    let mut direct = ReadBuf::new(buf.initialize_unfilled_to(want));
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut direct))?;
                    let n = direct.filled().len();
                    if n == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    buf.advance(n);
                    this.splitter.passed(n);
                    if !this.charge() {
                        return Poll::Ready(Err(Refused::Budget.into()));
                    }
                    this.settle_message();
                    return Poll::Ready(Ok(()));
                }
                let mut ahead = [0u8; READ_AHEAD];
                let mut read = ReadBuf::new(&mut ahead);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
                if read.filled().is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.ahead.clear();
                this.ahead.extend_from_slice(read.filled());
                this.ahead_at = 0;
                if this.busy_since.is_none() {
                    this.busy_since = Some(Instant::now());
                }
                continue;
            }
            if this.busy_since.is_none() {
                this.busy_since = Some(Instant::now());
            }
            let bytes = &this.ahead[this.ahead_at..];
            match need {
                Need::Header(missing) => {
                    let n = missing.min(bytes.len());
                    let pushed = this.splitter.push_header(&bytes[..n]);
                    this.ahead_at += n;
                    pushed?;
                }
                Need::Payload(left) => {
                    let n = left.min(bytes.len()).min(buf.remaining());
                    buf.put_slice(&bytes[..n]);
                    this.ahead_at += n;
                    this.splitter.passed(n);
                    if !this.charge() {
                        return Poll::Ready(Err(Refused::Budget.into()));
                    }
                    if this.ahead_at == this.ahead.len() {
                        this.ahead = Vec::new();
                        this.ahead_at = 0;
                    }
                    this.settle_message();
                    return Poll::Ready(Ok(()));
                }
            }
            if this.ahead_at == this.ahead.len() {
                this.ahead = Vec::new();
                this.ahead_at = 0;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::splitter::tests::frame;
    use super::splitter::{header_size, payload_length};
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Parses what the gate handed on: (fin, opcode, unmasked payload) per frame.
    fn frames(mut bytes: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let size = header_size(bytes);
            let length = payload_length(bytes) as usize;
            let mask = &bytes[size - 4..size];
            let payload = bytes[size..size + length]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            out.push((bytes[0] & 0x80 != 0, bytes[0] & 0x0f, payload));
            bytes = &bytes[size + length..];
        }
        out
    }

    async fn through_gate(input: Vec<u8>, leftover: usize, budget: usize) -> io::Result<Vec<u8>> {
        let (head, rest) = input.split_at(leftover);
        let budget = Arc::new(InboundBudget::new(budget));
        let mut gate = Gated::new(rest, head.to_vec(), 1 << 20, Arc::clone(&budget));
        let mut out = Vec::new();
        let mut chunk = [0u8; 700];
        loop {
            let n = gate.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        drop(gate);
        assert_eq!(budget.used(), 0, "the budget is given back");
        Ok(out)
    }

    #[tokio::test]
    async fn large_frames_become_fragments_of_the_same_message() {
        let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut input = frame(true, 1, b"small");
        input.extend(frame(true, 2, &big));
        input.extend(frame(false, 1, &big[..9000]));
        input.extend(frame(true, 9, b"ping"));
        input.extend(frame(true, 0, &big[9000..]));
        for leftover in [0, 3, 100, 9000] {
            let out = through_gate(input.clone(), leftover, usize::MAX)
                .await
                .unwrap();
            let frames = frames(&out);
            assert!(
                frames.iter().all(|(_, _, p)| p.len() <= PIECE),
                "{leftover}"
            );
            assert_eq!(frames[0], (true, 1, b"small".to_vec()));
            let mut messages: Vec<(u8, Vec<u8>)> = Vec::new();
            let mut open: Option<(u8, Vec<u8>)> = None;
            for (fin, opcode, payload) in frames.into_iter().skip(1) {
                if opcode >= 8 {
                    messages.push((opcode, payload));
                    continue;
                }
                let (kind, mut bytes) = open.take().unwrap_or((opcode, Vec::new()));
                bytes.extend(payload);
                if fin {
                    messages.push((kind, bytes));
                } else {
                    open = Some((kind, bytes));
                }
            }
            let kinds: Vec<u8> = messages.iter().map(|(k, _)| *k).collect();
            assert_eq!(kinds, [2, 9, 1]);
            assert_eq!(messages[0].1, big);
            assert_eq!(messages[2].1, big);
        }
    }

    #[tokio::test]
    async fn frames_no_server_accepts_are_refused_at_their_header() {
        let big = vec![7u8; 10_000];
        let mut unmasked = frame(true, 1, &big);
        unmasked[1] &= 0x7f;
        unmasked.drain(4..8);
        let mut reserved = frame(true, 1, &big);
        reserved[0] |= 0x40;
        let long_ping = frame(true, 9, &[0; 126]);
        let fragmented_ping = frame(false, 9, b"x");
        let reserved_opcode = frame(true, 3, b"x");
        for input in [
            unmasked,
            reserved,
            long_ping,
            fragmented_ping,
            reserved_opcode,
        ] {
            let error = through_gate(input, 0, usize::MAX).await.unwrap_err();
            assert!(
                matches!(refusal(&error), Some(Refused::Protocol(_))),
                "{error}"
            );
        }
    }

    #[tokio::test]
    async fn a_message_past_the_budget_is_refused() {
        let input = frame(true, 1, &vec![b'x'; 20_000]);
        let refused = through_gate(input.clone(), 0, 8_000).await.unwrap_err();
        assert_eq!(refusal(&refused), Some(Refused::Budget));
        assert!(through_gate(input, 0, 20_000 - ALLOWANCE).await.is_ok());
    }
}
