//! The check every cluster test ends with, over every member's record, and the two timings
//! the tests quote: how long a room went silent, and when a room took messages again.
//!
//! A member's seqs go up by exactly one within an epoch, across its reconnects too; after a
//! `reset` any seq may come next. No (room, epoch, seq) names two messages, whoever saw them.
//! Every message its sender saw come back reaches every member of its room exactly once,
//! unless that member was told of a reset, which is counted but is no lie.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use crate::member::{Record, Seen};

/// What the check found: each list describes every instance of one kind of lie.
#[derive(Debug, Default)]
pub struct Report {
    pub members: usize,
    /// Messages their senders saw come back.
    pub acknowledged: usize,
    pub deliveries: usize,
    pub lost: Vec<String>,
    /// A seq again within one epoch.
    pub duplicates: Vec<String>,
    /// A seq skipped, with no reset before it.
    pub gaps: Vec<String>,
    /// One (room, epoch, seq) with two messages, or one message at two seqs of an epoch.
    pub conflicts: Vec<String>,
    /// A sender's own messages in another order than it sent them.
    pub reordered: Vec<String>,
    /// A welcome in another epoch than the member had, without a reset.
    pub unannounced: Vec<String>,
    /// Reset notices by reason.
    pub resets: BTreeMap<String, usize>,
    /// Acknowledged messages a member did not get, after a reset told it so.
    pub missed_after_reset: usize,
    /// Messages a member got in two epochs.
    pub republished: usize,
    /// Error frames by code.
    pub refused: BTreeMap<String, usize>,
    /// Sent, and neither seen back nor refused.
    pub unanswered: usize,
    pub reconnects: usize,
}

impl Report {
    pub fn lies(&self) -> usize {
        [
            &self.lost,
            &self.duplicates,
            &self.gaps,
            &self.conflicts,
            &self.reordered,
            &self.unannounced,
        ]
        .iter()
        .map(|list| list.len())
        .sum()
    }

    /// Fails the test on any lie, with `context` (e.g. the servers' logs) after the report.
    pub fn assert_truthful(&self, context: &str) {
        if self.lies() == 0 {
            return;
        }
        let mut details = String::new();
        for (kind, list) in [
            ("lost", &self.lost),
            ("duplicate", &self.duplicates),
            ("gap", &self.gaps),
            ("conflict", &self.conflicts),
            ("reordered", &self.reordered),
            ("unannounced epoch", &self.unannounced),
        ] {
            for example in list.iter().take(8) {
                details.push_str(&format!("\n  {kind}: {example}"));
            }
        }
        panic!("the members were told something untrue: {self}{details}\n{context}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} members, {} messages acknowledged, {} deliveries: lost {}, duplicates within an \
             epoch {}, gaps {}, seq conflicts {}, reordered {}, epoch changes without a reset {}; \
             resets {:?} ({} acknowledged messages missed after one), republished in a new \
             epoch {}, refused {:?}, unanswered {}, reconnects {}",
            self.members,
            self.acknowledged,
            self.deliveries,
            self.lost.len(),
            self.duplicates.len(),
            self.gaps.len(),
            self.conflicts.len(),
            self.reordered.len(),
            self.unannounced.len(),
            self.resets,
            self.missed_after_reset,
            self.republished,
            self.refused,
            self.unanswered,
            self.reconnects,
        )
    }
}

/// What one member got, walked in order.
#[derive(Default)]
struct Walk<'a> {
    /// Message → the (epoch, seq) places it came at, repeats left out.
    delivered: HashMap<&'a str, BTreeSet<(&'a str, u64)>>,
    was_reset: bool,
}

/// What the members were told, all together.
#[derive(Default)]
struct Told<'a> {
    /// (room, epoch, seq) → the message the first member to get it got there.
    at: HashMap<(&'a str, &'a str, u64), &'a str>,
    /// Message → every place any member got it at.
    places: HashMap<&'a str, BTreeSet<(&'a str, u64)>>,
}

pub fn check(records: &[Record]) -> Report {
    let mut report = Report {
        members: records.len(),
        ..Report::default()
    };
    let mut told = Told::default();
    let walks: Vec<Walk> = records
        .iter()
        .map(|record| walk(record, &mut report, &mut told))
        .collect();
    for (message, places) in &told.places {
        for pair in places.iter().collect::<Vec<_>>().windows(2) {
            if pair[0].0 == pair[1].0 {
                report.conflicts.push(format!(
                    "{message} is at seqs {} and {} of {}",
                    pair[0].1, pair[1].1, pair[0].0
                ));
            }
        }
    }

    let mut acknowledged: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (record, walk) in records.iter().zip(&walks) {
        let own = format!("{}-m", record.name);
        let echoed: Vec<&str> = walk
            .delivered
            .keys()
            .copied()
            .filter(|message| message.starts_with(&own))
            .collect();
        let refusals: usize = record
            .frames
            .iter()
            .filter(|(_, seen)| matches!(seen, Seen::Error { .. }))
            .count();
        report.unanswered += record.sent.len().saturating_sub(echoed.len() + refusals);
        acknowledged.entry(&record.room).or_default().extend(echoed);
        check_own_order(record, &own, &mut report);
    }
    report.acknowledged = acknowledged.values().map(HashSet::len).sum();

    for (record, walk) in records.iter().zip(&walks) {
        for message in acknowledged.get(record.room.as_str()).into_iter().flatten() {
            let places = walk.delivered.get(message).cloned().unwrap_or_default();
            let epochs: HashSet<&str> = places.iter().map(|(epoch, _)| *epoch).collect();
            match places.len() {
                0 if walk.was_reset => report.missed_after_reset += 1,
                0 => report
                    .lost
                    .push(format!("{} never got {message}", record.name)),
                // Two seqs of one epoch is a conflict, counted above.
                count if count == epochs.len() && count > 1 => report.republished += 1,
                _ => {}
            }
        }
    }
    report
}

/// Walks one member's frames: seq order within each epoch, resets, errors, and every place
/// against what the other members were told there.
fn walk<'a>(record: &'a Record, report: &mut Report, told: &mut Told<'a>) -> Walk<'a> {
    let mut result = Walk::default();
    let mut epoch: Option<&str> = None;
    // The next seq due in this epoch; `None` right after a reset, when any may come.
    let mut next: Option<u64> = None;
    let mut reset_due = false;
    let name = &record.name;
    for (_, seen) in &record.frames {
        match seen {
            Seen::Welcome {
                epoch: new,
                seq,
                since,
            } => match epoch {
                None => {
                    epoch = Some(new);
                    next = Some(seq + 1);
                }
                Some(old) => {
                    report.reconnects += 1;
                    if old == new {
                        next = since.map(|since| since + 1).or(next);
                    } else {
                        epoch = Some(new);
                        next = None;
                        reset_due = true;
                    }
                }
            },
            Seen::Reset {
                epoch: new, reason, ..
            } => {
                *report.resets.entry(reason.clone()).or_default() += 1;
                epoch = Some(new);
                next = None;
                reset_due = false;
                result.was_reset = true;
            }
            Seen::Error { code } => *report.refused.entry(code.clone()).or_default() += 1,
            Seen::Chat { seq, message } => {
                let current = epoch.unwrap_or_default();
                report.deliveries += 1;
                if reset_due {
                    reset_due = false;
                    report
                        .unannounced
                        .push(format!("{name} in {current} from seq {seq}"));
                }
                match next {
                    Some(due) if *seq < due => report.duplicates.push(format!(
                        "{name}: seq {seq} of {current} again, {due} was due"
                    )),
                    Some(due) if *seq > due => report.gaps.push(format!(
                        "{name}: seq {seq} of {current} where {due} was due"
                    )),
                    _ => {}
                }
                next = Some(next.unwrap_or(0).max(seq + 1));
                let there = *told
                    .at
                    .entry((&record.room, current, *seq))
                    .or_insert(message);
                if there != message {
                    report.conflicts.push(format!(
                        "{} seq {seq} of {current} is {there} and {message}",
                        record.room
                    ));
                }
                told.places
                    .entry(message)
                    .or_default()
                    .insert((current, *seq));
                result
                    .delivered
                    .entry(message)
                    .or_default()
                    .insert((current, *seq));
            }
        }
    }
    result
}

/// A sender's own messages, as it saw them come back, must keep the order it sent them in.
fn check_own_order(record: &Record, own: &str, report: &mut Report) {
    let mut last: Option<u64> = None;
    for (_, seen) in &record.frames {
        match seen {
            Seen::Reset { .. } => last = None,
            Seen::Chat { message, .. } => {
                let Some(n) = message
                    .strip_prefix(own)
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                if let Some(later) = last.filter(|last| n < *last) {
                    let name = &record.name;
                    report
                        .reordered
                        .push(format!("{name} saw its m{n} after m{later}"));
                }
                last = Some(last.unwrap_or(0).max(n));
            }
            _ => {}
        }
    }
}

/// The longest time a member of `room` went without a chat frame between `from` and `to`.
pub fn longest_silence(records: &[Record], room: &str, from: Instant, to: Instant) -> Duration {
    records
        .iter()
        .filter(|record| record.room == room)
        .map(|record| {
            let arrivals = record
                .frames
                .iter()
                .filter(|(at, seen)| matches!(seen, Seen::Chat { .. }) && *at > from && *at < to)
                .map(|(at, _)| *at);
            let mut edges: Vec<Instant> =
                std::iter::once(from).chain(arrivals).chain([to]).collect();
            edges.sort();
            edges
                .windows(2)
                .map(|pair| pair[1] - pair[0])
                .max()
                .unwrap_or_default()
        })
        .max()
        .unwrap_or_default()
}

/// How many `reset` notices the members of `room` got.
pub fn resets_in(records: &[Record], room: &str) -> usize {
    records
        .iter()
        .filter(|record| record.room == room)
        .flat_map(|record| &record.frames)
        .filter(|(_, seen)| matches!(seen, Seen::Reset { .. }))
        .count()
}

/// From `after` until a member of `room` first saw come back a message it sent after then.
pub fn first_echo_after(records: &[Record], room: &str, after: Instant) -> Option<Duration> {
    records
        .iter()
        .filter(|record| record.room == room)
        .flat_map(|record| {
            let own = format!("{}-m", record.name);
            record.frames.iter().filter_map(move |(at, seen)| {
                let Seen::Chat { message, .. } = seen else {
                    return None;
                };
                let n: usize = message.strip_prefix(&own)?.parse().ok()?;
                (*record.sent.get(n - 1)? >= after).then(|| *at - after)
            })
        })
        .min()
}

#[test]
fn the_check_tells_lies_from_announced_losses() {
    let member = |name: &str, frames: Vec<Seen>, sent: usize| Record {
        name: name.to_string(),
        room: "r".to_string(),
        frames: frames
            .into_iter()
            .map(|seen| (Instant::now(), seen))
            .collect(),
        sent: vec![Instant::now(); sent],
        ..Record::default()
    };
    let welcome = |epoch: &str, seq| Seen::Welcome {
        epoch: epoch.to_string(),
        seq,
        since: None,
    };
    let chat = |seq, message: &str| Seen::Chat {
        seq,
        message: message.to_string(),
    };
    let reset = Seen::Reset {
        epoch: "e2".to_string(),
        seq: 0,
        reason: "epoch".to_string(),
    };
    let honest = [
        member(
            "a",
            vec![welcome("e1", 0), chat(1, "a-m1"), chat(2, "b-m1")],
            1,
        ),
        member(
            "b",
            vec![welcome("e1", 0), chat(1, "a-m1"), chat(2, "b-m1")],
            1,
        ),
        // Told of the loss: it may miss a-m1 and start the new epoch anywhere.
        member("c", vec![welcome("e1", 0), reset, chat(7, "b-m1")], 0),
    ];
    let report = check(&honest);
    assert_eq!(
        (
            report.lies(),
            report.acknowledged,
            report.missed_after_reset
        ),
        (0, 2, 1),
        "{report}"
    );

    let lying = [
        member(
            "a",
            vec![
                welcome("e1", 0),
                chat(1, "a-m1"),
                chat(2, "a-m2"),
                chat(2, "a-m2"),
            ],
            2,
        ),
        member(
            "b",
            vec![welcome("e1", 0), chat(1, "b-m1"), chat(3, "a-m2")],
            1,
        ),
        member(
            "c",
            vec![
                welcome("e1", 0),
                chat(1, "a-m1"),
                welcome("e9", 3),
                chat(4, "a-m2"),
            ],
            0,
        ),
    ];
    let report = check(&lying);
    assert_eq!(report.duplicates.len(), 1, "a got seq 2 twice: {report}");
    assert_eq!(report.gaps.len(), 1, "b skipped seq 2: {report}");
    assert_eq!(
        report.unannounced.len(),
        1,
        "c changed epoch silently: {report}"
    );
    // Seq 1 of e1 is a-m1 for a and c but b-m1 for b; a-m2 is at seqs 2 and 3 of e1.
    assert_eq!(report.conflicts.len(), 2, "{report}");
    assert_eq!(
        report.lost.len(),
        3,
        "a and c never got b-m1, b never got a-m1: {report}"
    );
}
