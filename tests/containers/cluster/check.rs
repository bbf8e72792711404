//! The zero-loss check over every member's record, and the stall and wait figures.
//!
//! - Within one epoch a member's seqs climb by exactly one; a jump only right after a
//!   `reset` (checked as frames arrive, see [`member`](super::member)).
//! - No (room, epoch, seq) carries two different texts, over all members.
//! - Every message delivered in a room (to anyone) reaches every member of that room that saw
//!   no reset exactly once; members with a reset are counted as reset, not lost.
//! - Every message a member sent was delivered, or refused with an error frame: nothing
//!   vanishes silently.
//! - No connection ends: an outage holds messages, it does not close sockets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use super::member::Record;

#[derive(Debug, Default)]
pub struct Report {
    pub members: usize,
    pub sent: usize,
    pub delivered: usize,
    /// (member, text) that was delivered in its room but never to it.
    pub lost: Vec<String>,
    /// Extra copies of a text one member received.
    pub duplicates: Vec<String>,
    /// Two texts at one (room, epoch, seq), or one text at two places.
    pub conflicts: Vec<String>,
    pub seq_faults: Vec<String>,
    /// Sent, delivered to nobody, and not answered with an error.
    pub vanished: Vec<String>,
    /// Error frames by code.
    pub errors: BTreeMap<String, usize>,
    /// Reset notices by reason, and how many members got one.
    pub resets: BTreeMap<String, usize>,
    pub reset_members: usize,
    /// What members with a reset did not receive: what the reset cost them.
    pub missed_after_reset: Vec<String>,
    /// Connections that ended while the member stayed (it resumed with `since`).
    pub disconnects: Vec<String>,
    pub odd: Vec<String>,
}

impl Report {
    /// Whether nothing is missing yet (sent messages all delivered or refused).
    pub fn settled(&self) -> bool {
        self.lost.is_empty() && self.vanished.is_empty()
    }

    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (what, list) in [
            ("lost", &self.lost),
            ("duplicated", &self.duplicates),
            ("conflicting", &self.conflicts),
            ("out of seq order", &self.seq_faults),
            ("vanished", &self.vanished),
            ("connections ended", &self.disconnects),
            ("odd frames or failures", &self.odd),
        ] {
            if !list.is_empty() {
                problems.push(format!(
                    "{} {what}, e.g. {:?}",
                    list.len(),
                    &list[..list.len().min(5)]
                ));
            }
        }
        problems
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} members, {} sent, {} delivered (frames); lost {}, duplicates {}, conflicts {}, \
             seq faults {}, vanished {}, connections ended {}; resets {} (members {}, reasons \
             {:?}; those members missed {} messages); error frames {:?}",
            self.members,
            self.sent,
            self.delivered,
            self.lost.len(),
            self.duplicates.len(),
            self.conflicts.len(),
            self.seq_faults.len(),
            self.vanished.len(),
            self.disconnects.len(),
            self.resets.values().sum::<usize>(),
            self.reset_members,
            self.resets,
            self.missed_after_reset.len(),
            self.errors,
        )
    }
}

pub fn check(records: &[Record]) -> Report {
    let mut report = Report {
        members: records.len(),
        ..Report::default()
    };
    // (room, epoch, seq) → text, and (room, text) → where it was seen.
    let mut at_seq: HashMap<(&str, &str, u64), &str> = HashMap::new();
    let mut places: HashMap<(&str, &str), (&str, u64)> = HashMap::new();
    let mut in_room: HashMap<&str, HashSet<&str>> = HashMap::new();
    for r in records {
        report.sent += r.sent_at.len();
        report.delivered += r.chats.len();
        report
            .seq_faults
            .extend(r.seq_faults.iter().map(|f| format!("{}: {f}", r.name)));
        report
            .odd
            .extend(r.odd_frames.iter().map(|f| format!("{}: {f}", r.name)));
        if let Some(failure) = &r.failure {
            report.odd.push(format!("{} failed: {failure}", r.name));
        }
        if !r.endings.is_empty() {
            report
                .disconnects
                .push(format!("{}: {:?}", r.name, r.endings));
        }
        for (_, code) in &r.errors {
            *report.errors.entry(code.clone()).or_default() += 1;
        }
        for (_, reason) in &r.resets {
            *report.resets.entry(reason.clone()).or_default() += 1;
        }
        if !r.resets.is_empty() {
            report.reset_members += 1;
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for chat in &r.chats {
            let text = chat.text.as_str();
            *seen.entry(text).or_default() += 1;
            in_room.entry(&r.room).or_default().insert(text);
            let key = (r.room.as_str(), chat.epoch.as_str(), chat.seq);
            match at_seq.get(&key) {
                Some(other) if *other != text => report.conflicts.push(format!(
                    "{} epoch {} seq {}: {text:?} for {}, {other:?} for another",
                    r.room, chat.epoch, chat.seq, r.name
                )),
                Some(_) => {}
                None => {
                    at_seq.insert(key, text);
                }
            }
            let place = (chat.epoch.as_str(), chat.seq);
            match places.get(&(r.room.as_str(), text)) {
                Some(other) if *other != place => report.conflicts.push(format!(
                    "{text:?} at {place:?} for {} and at {other:?} for another",
                    r.name
                )),
                Some(_) => {}
                None => {
                    places.insert((&r.room, text), place);
                }
            }
        }
        for (text, count) in seen {
            if count > 1 {
                report
                    .duplicates
                    .push(format!("{}: {text} x{count}", r.name));
            }
        }
    }
    for r in records {
        let delivered = in_room.get(r.room.as_str());
        let has = |text: &str| delivered.is_some_and(|set| set.contains(text));
        // An `unavailable` frame names no message: each one accounts for one undelivered
        // message, whichever it was.
        let undelivered: Vec<usize> = (1..=r.sent_at.len())
            .filter(|n| !has(&format!("{}-{n}", r.name)))
            .collect();
        let refused = r.errors.iter().filter(|(_, c)| c == "unavailable").count();
        if undelivered.len() > refused {
            report.vanished.push(format!(
                "{}: {} of {} sent never delivered ({:?}), {refused} refused",
                r.name,
                undelivered.len(),
                r.sent_at.len(),
                &undelivered[..undelivered.len().min(12)]
            ));
        }
        let got: HashSet<&str> = r.chats.iter().map(|c| c.text.as_str()).collect();
        if let Some(delivered) = delivered {
            let mut missing: Vec<&&str> = delivered.iter().filter(|t| !got.contains(*t)).collect();
            missing.sort();
            let missing = missing.iter().map(|text| format!("{}: {text}", r.name));
            if r.resets.is_empty() {
                report.lost.extend(missing);
            } else {
                report.missed_after_reset.extend(missing);
            }
        }
    }
    report
}

/// The longest time without a chat frame between `from` and `to`, over `records` together.
pub fn longest_silence<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    from: Instant,
    to: Instant,
) -> Duration {
    let mut times: Vec<Instant> = records
        .into_iter()
        .flat_map(|r| r.chats.iter().map(|c| c.at))
        .filter(|at| (from..=to).contains(at))
        .collect();
    times.sort();
    let mut last = from;
    let mut longest = Duration::ZERO;
    for at in times.into_iter().chain(std::iter::once(to)) {
        longest = longest.max(at.duration_since(last));
        last = at;
    }
    longest
}

/// The longest wait of a member for one of its own messages to come back.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo {
    pub wait: Duration,
    /// When that message was sent, and by whom (an index into the records given).
    pub sent: Option<(Instant, usize)>,
}

/// The longest a member waited for one of its own messages sent between `from` and `to` to
/// come back; messages that never did count up to `until`.
pub fn longest_echo<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    from: Instant,
    to: Instant,
    until: Instant,
) -> Echo {
    let mut longest = Echo::default();
    for (member, r) in records.into_iter().enumerate() {
        let mut echoed: HashMap<usize, Instant> = HashMap::new();
        for chat in &r.chats {
            if let Some(n) = r.own_number(&chat.text) {
                echoed.entry(n).or_insert(chat.at);
            }
        }
        for (index, sent) in r.sent_at.iter().enumerate() {
            if !(from..=to).contains(sent) {
                continue;
            }
            let back = echoed.get(&(index + 1)).copied().unwrap_or(until);
            let wait = back.saturating_duration_since(*sent);
            if wait > longest.wait {
                longest = Echo {
                    wait,
                    sent: Some((*sent, member)),
                };
            }
        }
    }
    longest
}

/// How long the worst-off member of a group went without a message, and waited for its own.
pub struct Stall {
    pub members: usize,
    pub silence: Duration,
    pub echo: Echo,
    /// Who waited longest for their own message, and when it was sent in the window.
    pub echo_by: String,
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} members, {:.2?} / {:.2?} ({})",
            self.members, self.silence, self.echo.wait, self.echo_by
        )
    }
}

/// [`Stall`] of the members `keep` picks, between `window`'s ends; echoes that never came
/// count until `until`.
pub fn stall(
    records: &[Record],
    (from, to): (Instant, Instant),
    until: Instant,
    keep: impl Fn(&Record) -> bool,
) -> Stall {
    let group: Vec<&Record> = records.iter().filter(|r| keep(r)).collect();
    let silence = group
        .iter()
        .map(|r| longest_silence([*r], from, to))
        .max()
        .unwrap_or_default();
    let echo = longest_echo(group.iter().copied(), from, to, until);
    let echo_by = match echo.sent {
        Some((sent, member)) => format!(
            "{}'s message sent {:.2?} into the window",
            group[member].name,
            sent.duration_since(from)
        ),
        None => "nothing sent".into(),
    };
    Stall {
        members: group.len(),
        silence,
        echo,
        echo_by,
    }
}
