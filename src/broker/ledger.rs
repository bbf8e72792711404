//! Frames counted while they are alive: what history, feeds and replays hold, in bytes.
//!
//! A frame is shared by every member it goes to, so adding up queues would count one frame
//! many times. Instead each frame carries its own count and gives it back when its last
//! holder drops it: [`FrameLedger::alive`] is the memory all frames take, each counted
//! with the same overhead a history entry is charged, so the two can be compared.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use super::Frame;
use super::history::ENTRY_OVERHEAD;

#[derive(Debug, Default)]
pub struct FrameLedger {
    alive: AtomicUsize,
}

/// A frame's text and the ledger it gives its bytes back to.
struct Counted {
    text: String,
    ledger: Arc<FrameLedger>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        self.text.as_bytes()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.ledger
            .alive
            .fetch_sub(self.text.len() + ENTRY_OVERHEAD, Ordering::Relaxed);
    }
}

impl FrameLedger {
    /// `text` as a shareable frame, counted until its last clone is dropped.
    pub fn frame(self: &Arc<Self>, text: String) -> Frame {
        self.alive
            .fetch_add(text.len() + ENTRY_OVERHEAD, Ordering::Relaxed);
        let owner = Counted {
            text,
            ledger: Arc::clone(self),
        };
        // A `String` is UTF-8, so this cannot fail; were it ever to, an empty frame is
        // safer than a panic in the broker.
        Frame::try_from(Bytes::from_owner(owner)).unwrap_or_else(|_| Frame::from_static(""))
    }

    /// Bytes of every frame still held anywhere.
    pub fn alive(&self) -> usize {
        self.alive.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_frame_once_however_often_it_is_shared() {
        let ledger = Arc::new(FrameLedger::default());
        let frame = ledger.frame("hello".to_string());
        let copies: Vec<Frame> = (0..10).map(|_| frame.clone()).collect();
        assert_eq!(ledger.alive(), 5 + ENTRY_OVERHEAD);
        assert_eq!(copies[3].as_str(), "hello");
        drop(frame);
        assert_eq!(ledger.alive(), 5 + ENTRY_OVERHEAD);
        drop(copies);
        assert_eq!(ledger.alive(), 0);
    }
}
