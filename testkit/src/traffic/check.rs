//! The zero-loss check over every client's tally, and what the swap cost.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::tally::{Tally, summary};

/// What the swap cost, over all clients.
#[derive(Debug)]
pub struct Outcome {
    pub clients: usize,
    pub last_seq: u64,
    pub sent: u64,
    pub resent: u64,
    /// Own messages the publisher saw twice, because it re-sent them.
    pub echoed_twice: u64,
    pub lost: u64,
    /// The longest time any client was without a connection, and the median of the longest
    /// per client.
    pub longest_outage: Duration,
    pub median_outage: Duration,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} clients, {} messages (seq 1..={}), {} re-sent ({} seen twice by the publisher), \
             {} lost; clients were disconnected at most {:.0?} (median of each client's longest \
             {:.0?})",
            self.clients,
            self.sent,
            self.last_seq,
            self.resent,
            self.echoed_twice,
            self.lost,
            self.longest_outage,
            self.median_outage,
        )
    }
}

/// The zero-loss check: every client saw every seq after its base exactly once, in order,
/// with the same message at each seq; every published message is in that order; every
/// connection ended with `expected_close` (the swap) and nothing else. `hint` is added to the
/// failure message.
pub fn check(tallies: &[Tally], last_seq: u64, expected_close: u16, hint: &str) -> Outcome {
    let mut problems = Vec::new();
    let publisher = tallies
        .iter()
        .find(|t| t.name == "publisher")
        .expect("a publisher");
    let mut order: BTreeMap<u64, &str> = BTreeMap::new();
    for t in tallies {
        let Some(base) = t.base else {
            problems.push(format!("{} never connected", t.name));
            continue;
        };
        if let Some(failure) = &t.failure {
            problems.push(format!("{} failed: {failure}", t.name));
        }
        let seqs: Vec<u64> = t.received.iter().map(|(seq, _)| *seq).collect();
        let expected: Vec<u64> = (base + 1..=last_seq).collect();
        if seqs != expected {
            let missing = expected.iter().filter(|s| !seqs.contains(s)).count();
            problems.push(format!(
                "{} saw {} seqs, expected {} ({base}+1..={last_seq}): {missing} missing, gaps {:?}",
                t.name,
                seqs.len(),
                expected.len(),
                t.gaps.iter().take(5).collect::<Vec<_>>()
            ));
        }
        if !t.duplicates.is_empty() {
            problems.push(format!(
                "{} was sent {} seqs twice, e.g. {:?}",
                t.name,
                t.duplicates.len(),
                &t.duplicates[..t.duplicates.len().min(5)]
            ));
        }
        if !t.notices.is_empty() {
            problems.push(format!("{} got notices {:?}", t.name, t.notices));
        }
        let unexpected: Vec<&String> = t
            .endings
            .iter()
            .filter(|e| !e.starts_with(&format!("{expected_close} ")))
            .collect();
        if t.endings.is_empty() || !unexpected.is_empty() {
            problems.push(format!(
                "{}: connections ended {:?}, expected close {expected_close} only",
                t.name, t.endings
            ));
        }
        if t.epochs.windows(2).any(|w| w[0] != w[1]) {
            problems.push(format!("{} saw the epoch change: {:?}", t.name, t.epochs));
        }
        for (seq, message) in &t.received {
            match order.get(seq) {
                Some(other) if other != message => problems.push(format!(
                    "seq {seq} is {message:?} for {} but {other:?} for another client",
                    t.name
                )),
                Some(_) => {}
                None => {
                    order.insert(*seq, message);
                }
            }
        }
    }
    let published: HashSet<&str> = order.values().copied().collect();
    let lost: Vec<u64> = (1..=publisher.sent)
        .filter(|id| !published.contains(format!("p{id}").as_str()))
        .collect();
    if !lost.is_empty() {
        problems.push(format!(
            "{} of {} published messages are in no client's history, e.g. {:?}",
            lost.len(),
            publisher.sent,
            &lost[..lost.len().min(10)]
        ));
    }
    if !problems.is_empty() {
        let details: Vec<String> = tallies.iter().map(summary).collect();
        panic!(
            "the swap lost or repeated messages:\n- {}\n{hint}\nclients:\n{}",
            problems.join("\n- "),
            details.join("\n")
        );
    }
    let mut worst: Vec<Duration> = tallies
        .iter()
        .map(|t| t.outages.iter().copied().max().unwrap_or_default())
        .collect();
    worst.sort();
    Outcome {
        clients: tallies.len(),
        last_seq,
        sent: publisher.sent,
        resent: publisher.resent,
        echoed_twice: publisher.echoed_twice,
        lost: lost.len() as u64,
        longest_outage: worst.last().copied().unwrap_or_default(),
        median_outage: worst[worst.len() / 2],
    }
}
