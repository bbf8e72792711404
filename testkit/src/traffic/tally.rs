//! What one client of the blue-green traffic saw, and its one-line summary.

use std::time::Duration;

/// What one client saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub name: String,
    /// The room's seq in the first welcome: this client expects every seq after it.
    pub base: Option<u64>,
    pub last_seq: u64,
    /// Chat messages in the order they arrived, duplicates left out.
    pub received: Vec<(u64, String)>,
    /// Seqs that arrived again (at or below the last one).
    pub duplicates: Vec<u64>,
    /// (last seq, next seq) wherever the next was not last + 1.
    pub gaps: Vec<(u64, u64)>,
    /// `reset` and `error` frames, verbatim.
    pub notices: Vec<String>,
    /// How each connection ended: "1012 server restart", "no close frame: ...".
    pub endings: Vec<String>,
    pub epochs: Vec<String>,
    pub connects: u32,
    pub connect_failures: u32,
    /// From the end of one connection to the welcome on the next, for each reconnect.
    pub outages: Vec<Duration>,
    /// Publisher only: messages sent (ids 1..=sent), re-sent, and still unconfirmed.
    pub sent: u64,
    pub resent: u64,
    pub pending: usize,
    /// Publisher only: own messages that came back more than once (after a re-send).
    pub echoed_twice: u64,
    pub failure: Option<String>,
}

pub fn summary(t: &Tally) -> String {
    format!(
        "  {}: base {:?}, last seq {}, {} received, {} duplicates, gaps {:?}, notices {:?}, \
         endings {:?}, {} connects, {} failed connects, sent {} resent {} pending {}{}",
        t.name,
        t.base,
        t.last_seq,
        t.received.len(),
        t.duplicates.len(),
        t.gaps.iter().take(5).collect::<Vec<_>>(),
        t.notices.iter().take(3).collect::<Vec<_>>(),
        t.endings,
        t.connects,
        t.connect_failures,
        t.sent,
        t.resent,
        t.pending,
        t.failure
            .as_ref()
            .map(|f| format!(", FAILED: {f}"))
            .unwrap_or_default()
    )
}
