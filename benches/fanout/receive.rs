//! The receiving side: members' streams read together, every seq marked once, latency from
//! the send time in each message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::{self, SelectAll, SplitStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use testkit::bench::Histogram;
use testkit::ws::TunedWs as Ws;

/// What one member received: which seqs (a bitset), and how its connection ended.
pub struct MemberState {
    pub room: usize,
    pub seen: Vec<u64>,
    pub unique: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub highest: u64,
    pub end: Option<String>,
}

impl MemberState {
    /// Marks `seq` received; false when it was a duplicate.
    fn mark(&mut self, seq: u64) -> bool {
        let index = seq as usize - 1;
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicated += 1;
            return false;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        if seq < self.highest {
            self.reordered += 1;
        }
        self.highest = self.highest.max(seq);
        true
    }

    /// How many distinct seqs in 1..=last it received.
    pub fn unique_up_to(&self, last: u64) -> u64 {
        let full = (last / 64) as usize;
        let mut total: u64 = self
            .seen
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = last % 64;
        if rest > 0
            && let Some(word) = self.seen.get(full)
        {
            total += u64::from((word & ((1u64 << rest) - 1)).count_ones());
        }
        total
    }
}

/// What one reader task saw.
pub struct Read {
    pub members: Vec<MemberState>,
    pub latency_us: Histogram,
    pub malformed: u64,
    pub last_ns: u64,
}

/// One reader task: many members' streams polled together until `stop`.
pub async fn read(
    conns: Vec<(usize, usize, SplitStream<Ws>)>,
    epoch: Instant,
    max_seq: u64,
    delivered: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Read {
    let mut members = Vec::with_capacity(conns.len());
    let mut all = SelectAll::new();
    for (slot, (_, room, stream)) in conns.into_iter().enumerate() {
        members.push(MemberState {
            room,
            seen: Vec::new(),
            unique: 0,
            duplicated: 0,
            reordered: 0,
            highest: 0,
            end: None,
        });
        all.push(
            stream
                .map(move |item| (slot, Some(item)))
                .chain(stream::once(futures_util::future::ready((slot, None)))),
        );
    }
    let mut read = Read {
        members: Vec::new(),
        latency_us: Histogram::default(),
        malformed: 0,
        last_ns: 0,
    };
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.changed() => break,
            next = all.next() => next,
        };
        let Some((slot, event)) = next else {
            // Every connection ended: nothing left but the stop.
            let _ = stop.changed().await;
            break;
        };
        let member = &mut members[slot];
        match event {
            Some(Ok(Message::Text(text))) => {
                let now = epoch.elapsed().as_nanos() as u64;
                match parse_delivery(text.as_str()) {
                    Some((sent, seq)) if seq > 0 && seq <= max_seq => {
                        read.latency_us.record(now.saturating_sub(sent) / 1000);
                        if member.mark(seq) {
                            delivered.fetch_add(1, Ordering::Relaxed);
                            read.last_ns = now;
                        }
                    }
                    _ => read.malformed += 1,
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or("close (no code)".to_string(), |f| {
                    format!("close {}", u16::from(f.code))
                });
                member.end.get_or_insert(code);
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                member.end.get_or_insert(format!("error: {error}"));
            }
            None => {
                member.end.get_or_insert("eof".to_string());
            }
        }
    }
    read.members = members;
    read
}

/// (send time in ns since the bench epoch, seq) from a delivered chat frame.
pub fn parse_delivery(text: &str) -> Option<(u64, u64)> {
    parse_fast(text).or_else(|| {
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        let message = value["message"].as_str()?;
        Some((
            message.split(':').next()?.parse().ok()?,
            value["seq"].as_u64()?,
        ))
    })
}

/// The same without a JSON parser, for `{"message":"<sent ns>:…","seq":N,…}` as roomcast
/// writes it: the generator reads every delivery, and a full parse would make it the
/// bottleneck.
pub fn parse_fast(text: &str) -> Option<(u64, u64)> {
    let rest = text.as_bytes().strip_prefix(b"{\"message\":\"")?;
    let colon = rest.iter().position(|&b| b == b':')?;
    let sent = digits(&rest[..colon])?;
    let seq_at = rest.windows(7).rposition(|w| w == b",\"seq\":")? + 7;
    let seq_len = rest[seq_at..].iter().position(|b| !b.is_ascii_digit())?;
    Some((sent, digits(&rest[seq_at..seq_at + seq_len])?))
}

fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 19 {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}
