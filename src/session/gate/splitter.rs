//! Reading client frame headers as they pass, and cutting large data frames into fragments
//! of at most [`PIECE`] bytes (a multiple of 4, so the client's mask still lines up and the
//! payload passes through untouched). Pure: the gate feeds it bytes.

/// The largest fragment tungstenite is handed: its read buffer never grows much past it.
pub const PIECE: usize = 2048;

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
pub(super) enum Need {
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

    /// Header bytes to hand on before any payload.
    pub(super) fn pending_header(&self) -> &[u8] {
        &self.pending[self.pending_at..self.pending_len]
    }

    pub(super) fn header_passed(&mut self, bytes: usize) {
        self.pending_at += bytes;
    }

    pub(super) fn in_payload(&self) -> bool {
        self.in_payload
    }

    /// Bytes of the current message handed on so far.
    pub(super) fn message_bytes(&self) -> usize {
        self.message_bytes
    }

    pub(super) fn forget_message(&mut self) {
        self.message_bytes = 0;
    }

    /// Between messages: no frame or message is half received.
    pub fn is_idle(&self) -> bool {
        self.header_len == 0 && !self.in_payload && !self.message_open
    }

    pub(super) fn need(&self) -> Need {
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
    pub(super) fn push_header(&mut self, bytes: &[u8]) -> Result<(), Refused> {
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
    pub(super) fn passed(&mut self, bytes: usize) {
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
    pub(super) fn message_complete(&self) -> bool {
        !self.message_open && !self.in_payload && self.header_len == 0
    }
}

/// The size of a frame header from its first two bytes.
pub(super) fn header_size(header: &[u8]) -> usize {
    let extended = match header[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if header[1] & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

pub(super) fn payload_length(header: &[u8]) -> u64 {
    match header[1] & 0x7f {
        126 => u16::from_be_bytes([header[2], header[3]]) as u64,
        127 => u64::from_be_bytes(header[2..10].try_into().unwrap_or([0xff; 8])),
        short => short as u64,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A client frame: masked with a fixed key, as a browser would send it.
    pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
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
