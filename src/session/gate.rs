//! The inbound gate: the socket's bytes on their way to tungstenite, frame by frame.
//!
//! tungstenite sizes its read buffer by the largest frame header it has seen and never
//! shrinks it, so one 64 KiB frame would cost a connection 64 KiB for good. The gate
//! re-cuts every large data frame into fragments of at most [`PIECE`] bytes (a multiple of 4,
//! so the client's mask still lines up, and the payload passes through untouched), which
//! tungstenite joins back into the same message. On the way it sees where every message
//! starts and ends, which gives the session a deadline for finishing one, and it charges
//! what a large message holds to a process-wide inbound budget.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The largest fragment tungstenite is handed: its read buffer never grows much past it.
pub const PIECE: usize = 2048;
/// What a message may hold before it draws on the inbound budget.
pub const ALLOWANCE: usize = 2048;
/// Bytes read from the socket ahead of the frame being passed on.
const READ_AHEAD: usize = 512;

/// Bytes of large messages being received by every connection together.
#[derive(Debug)]
pub struct InboundBudget {
    used: AtomicUsize,
    max: usize,
}

impl InboundBudget {
    pub fn new(max: usize) -> InboundBudget {
        InboundBudget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    fn take(&self, bytes: usize) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.max {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// What the gate makes of the frames it sees; the pure part, tested on its own.
#[derive(Debug, Default)]
pub struct Splitter {
    /// An incoming frame header being read.
    header: [u8; 14],
    header_len: usize,
    /// A rewritten header waiting to be handed on.
    pending: [u8; 14],
    pending_len: usize,
    pending_at: usize,
    /// Payload bytes left in the incoming frame, and in the fragment being handed on.
    frame_left: u64,
    piece_left: u64,
    /// Set while an incoming frame is cut into fragments: its FIN bit and mask.
    cutting: Option<(bool, [u8; 4])>,
    in_payload: bool,
    /// The payload being passed is a data frame's (not a ping, pong or close).
    data_payload: bool,
    /// A data message has started and a frame of it with FIN set has not come yet.
    message_open: bool,
    /// Bytes of the current message passed on so far.
    message_bytes: usize,
    /// Frames larger than this go to tungstenite whole, for it to refuse at once.
    max_frame: u64,
}

/// What the splitter needs from the bytes after the current position.
enum Need {
    /// This many more header bytes.
    Header(usize),
    /// Up to this many payload bytes.
    Payload(usize),
}

impl Splitter {
    pub fn new(max_frame: usize) -> Splitter {
        Splitter {
            max_frame: max_frame as u64,
            ..Splitter::default()
        }
    }

    /// Between messages: no frame or message is half received.
    pub fn is_idle(&self) -> bool {
        self.header_len == 0 && !self.in_payload && !self.message_open
    }

    fn need(&self) -> Need {
        if self.in_payload {
            return Need::Payload(self.piece_left.min(usize::MAX as u64) as usize);
        }
        if self.header_len < 2 {
            return Need::Header(2 - self.header_len);
        }
        let full = header_size(&self.header);
        Need::Header(full - self.header_len)
    }

    /// Takes header bytes; once the header is whole, decides how to pass the frame on.
    /// Frames no server may accept are refused here, before tungstenite would reserve
    /// room for their payload.
    fn push_header(&mut self, bytes: &[u8]) -> Result<(), Refused> {
        self.header[self.header_len..self.header_len + bytes.len()].copy_from_slice(bytes);
        self.header_len += bytes.len();
        if self.header_len < 2 || self.header_len < header_size(&self.header) {
            return Ok(());
        }
        let header = &self.header[..self.header_len];
        let (fin, rsv, opcode) = (header[0] & 0x80 != 0, header[0] & 0x70, header[0] & 0x0f);
        let masked = header[1] & 0x80 != 0;
        let length = payload_length(header);
        let is_data = opcode < 8;
        if rsv != 0 {
            return Err(Refused::Protocol("reserved bits set without an extension"));
        }
        if !masked {
            return Err(Refused::Protocol("client frames must be masked"));
        }
        if matches!(opcode, 3..=7 | 11..=15) {
            return Err(Refused::Protocol("reserved opcode"));
        }
        if !is_data && (!fin || length > 125) {
            return Err(Refused::Protocol(
                "control frames must be final and at most 125 bytes",
            ));
        }
        if is_data {
            // A final frame's message is in progress until its payload has passed.
            self.message_open = !fin;
        }
        self.data_payload = is_data;
        self.frame_left = length;
        self.in_payload = length > 0;
        // Frames tungstenite must see as sent: control frames, frames over its limit (which
        // it refuses from the header alone), and frames small enough already.
        let cut = is_data && length > PIECE as u64 && length <= self.max_frame;
        if cut {
            let mut mask = [0; 4];
            mask.copy_from_slice(&header[header.len() - 4..]);
            self.cutting = Some((fin, mask));
            self.start_piece(header[0] & 0x0f, false);
        } else {
            self.cutting = None;
            self.piece_left = length;
            self.pending[..self.header_len].copy_from_slice(header);
            self.pending_len = self.header_len;
            self.pending_at = 0;
        }
        self.header_len = 0;
        if !self.in_payload {
            self.frame_done();
        }
        Ok(())
    }

    /// Writes the header of the next fragment of a frame being cut.
    fn start_piece(&mut self, opcode: u8, continuation: bool) {
        let Some((fin, mask)) = self.cutting else {
            return;
        };
        let piece = self.frame_left.min(PIECE as u64);
        let last = piece == self.frame_left;
        let opcode = if continuation { 0 } else { opcode };
        self.pending[0] = if last && fin { 0x80 } else { 0 } | opcode;
        let mut at = 2;
        if piece < 126 {
            self.pending[1] = 0x80 | piece as u8;
        } else {
            self.pending[1] = 0x80 | 126;
            self.pending[2..4].copy_from_slice(&(piece as u16).to_be_bytes());
            at = 4;
        }
        self.pending[at..at + 4].copy_from_slice(&mask);
        self.pending_len = at + 4;
        self.pending_at = 0;
        self.piece_left = piece;
    }

    /// Payload bytes were passed on.
    fn passed(&mut self, bytes: usize) {
        self.frame_left -= bytes as u64;
        self.piece_left -= bytes as u64;
        if self.data_payload {
            self.message_bytes += bytes;
        }
        if self.frame_left == 0 {
            self.in_payload = false;
            self.frame_done();
        } else if self.piece_left == 0 {
            self.start_piece(0, true);
        }
    }

    fn frame_done(&mut self) {
        self.cutting = None;
    }

    /// The current message is complete: its bytes no longer count.
    fn message_complete(&self) -> bool {
        !self.message_open && !self.in_payload && self.header_len == 0
    }
}

/// The size of a frame header from its first two bytes.
fn header_size(header: &[u8]) -> usize {
    let extended = match header[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if header[1] & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

fn payload_length(header: &[u8]) -> u64 {
    match header[1] & 0x7f {
        126 => u16::from_be_bytes([header[2], header[3]]) as u64,
        127 => u64::from_be_bytes(header[2..10].try_into().unwrap_or([0xff; 8])),
        short => short as u64,
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
            self.splitter.message_bytes = 0;
            self.budget.give_back(self.charged);
            self.charged = 0;
        }
        if self.splitter.is_idle() {
            self.busy_since = None;
        }
    }

    /// Charges what the message holds past the allowance; false when the budget is spent.
    fn charge(&mut self) -> bool {
        let over = self.splitter.message_bytes.saturating_sub(ALLOWANCE);
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

/// Why the gate failed a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Large messages in flight have used the inbound budget.
    Budget,
    /// A frame no server may accept.
    Protocol(&'static str),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Budget => f.write_str("inbound budget spent"),
            Refused::Protocol(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for Refused {}

impl From<Refused> for io::Error {
    fn from(refused: Refused) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, refused)
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
            let splitter = &mut this.splitter;
            if splitter.pending_at < splitter.pending_len {
                let pending = &splitter.pending[splitter.pending_at..splitter.pending_len];
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..n]);
                splitter.pending_at += n;
                if splitter.pending_at == splitter.pending_len && !splitter.in_payload {
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
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A client frame: masked with a fixed key, as a browser would send it.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

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

    #[test]
    fn idle_only_between_messages() {
        let mut splitter = Splitter::new(1 << 20);
        assert!(splitter.is_idle());
        let first = frame(false, 1, b"part");
        splitter.push_header(&first[..2]).unwrap();
        assert!(!splitter.is_idle(), "half a header");
        splitter.push_header(&first[2..6]).unwrap();
        splitter.passed(4);
        assert!(!splitter.is_idle(), "the message is open");
        let ping = frame(true, 9, b"");
        splitter.push_header(&ping).unwrap();
        assert!(!splitter.is_idle(), "a ping does not finish it");
        let last = frame(true, 0, b"end");
        splitter.push_header(&last[..6]).unwrap();
        splitter.passed(3);
        assert!(splitter.is_idle());
    }
}
