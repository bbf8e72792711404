//! A room's bounded history for `since` replay, and the budget all rooms of a process share.
//!
//! A room keeps at most `max_entries` messages and `max_bytes` of them; past either, its
//! oldest go. The embedded broker also holds every room's history under one process-wide
//! budget: when the rooms together pass it, the largest histories are cut down to a common
//! level ([`fair_level`]), so a few huge rooms cannot push a quiet room's history out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Frame;

/// What one entry costs besides its frame: the deque slot and the shared buffer's header.
pub const ENTRY_OVERHEAD: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub max_entries: usize,
    pub max_bytes: usize,
}

/// The frames a replay sends next.
#[derive(Debug, Default)]
pub struct Page {
    pub frames: Vec<Frame>,
    /// The seq of the last frame in `frames`.
    pub last: u64,
    /// The history no longer starts right after the `after` asked for: messages were lost.
    pub gap: bool,
}

/// One room's messages, oldest first, seqs consecutive.
#[derive(Debug, Default)]
pub struct History {
    entries: VecDeque<(u64, Frame)>,
    /// What the entries cost, overhead included.
    bytes: usize,
}

fn cost(frame: &Frame) -> usize {
    frame.len() + ENTRY_OVERHEAD
}

impl History {
    /// Appends `frame` and trims to `limits`; returns the bytes added and the bytes freed.
    pub fn push(&mut self, seq: u64, frame: Frame, limits: HistoryLimits) -> (usize, usize) {
        if limits.max_entries == 0 {
            return (0, 0);
        }
        let added = cost(&frame);
        self.entries.push_back((seq, frame));
        self.bytes += added;
        let mut freed = 0;
        while self.entries.len() > limits.max_entries
            || (self.bytes > limits.max_bytes && self.entries.len() > 1)
        {
            freed += self.pop_oldest();
        }
        (added, freed)
    }

    /// Drops the oldest entries until the history costs at most `max_bytes`; returns the
    /// bytes freed.
    pub fn trim_to(&mut self, max_bytes: usize) -> usize {
        let mut freed = 0;
        while self.bytes > max_bytes && !self.entries.is_empty() {
            freed += self.pop_oldest();
        }
        freed
    }

    fn pop_oldest(&mut self) -> usize {
        match self.entries.pop_front() {
            Some((_, frame)) => {
                let freed = cost(&frame);
                self.bytes -= freed;
                freed
            }
            None => 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The seq of the oldest message kept.
    pub fn oldest(&self) -> Option<u64> {
        self.entries.front().map(|(seq, _)| *seq)
    }

    /// Up to `max_frames` frames (and about `max_bytes`, at least one) after seq `after` and
    /// up to seq `until`. The frames are shared, not copied.
    pub fn page(&self, after: u64, until: u64, max_frames: usize, max_bytes: usize) -> Page {
        let mut page = Page {
            last: after,
            ..Page::default()
        };
        let Some(oldest) = self.oldest() else {
            page.gap = after < until;
            return page;
        };
        page.gap = oldest > after + 1;
        let skip = after.saturating_sub(oldest - 1) as usize;
        let mut bytes = 0;
        for (seq, frame) in self.entries.iter().skip(skip) {
            if *seq > until || page.frames.len() == max_frames || bytes >= max_bytes {
                break;
            }
            bytes += frame.len();
            page.frames.push(frame.clone());
            page.last = *seq;
        }
        page
    }
}

/// The history bytes of every room of the embedded broker, against one budget.
#[derive(Debug)]
pub struct HistoryBudget {
    used: AtomicUsize,
    max: usize,
}

impl HistoryBudget {
    pub fn new(max: usize) -> HistoryBudget {
        HistoryBudget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    pub fn charge(&self, added: usize, freed: usize) {
        if added >= freed {
            self.used.fetch_add(added - freed, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(freed - added, Ordering::Relaxed);
        }
    }

    pub fn is_over(&self) -> bool {
        self.used.load(Ordering::Relaxed) > self.max
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// A rebalance frees down to this, a tenth under the budget, so it runs once per tenth
    /// of the budget published rather than on every publish.
    pub fn target(&self) -> usize {
        self.max - self.max / 10
    }
}

/// The largest level L such that the rooms, each cut to at most L bytes, hold at most
/// `target` bytes in all: rooms under L keep everything, only the largest are cut.
pub fn fair_level(sizes: &mut [usize], target: usize) -> usize {
    sizes.sort_unstable();
    let mut below = 0;
    for (index, &size) in sizes.iter().enumerate() {
        let rooms_at_or_above = sizes.len() - index;
        // Every room from here on would keep `size`; does that fit?
        if below + size * rooms_at_or_above > target {
            return (target - below) / rooms_at_or_above;
        }
        below += size;
    }
    usize::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: HistoryLimits = HistoryLimits {
        max_entries: 100,
        max_bytes: 1 << 20,
    };

    fn frame(seq: u64, bytes: usize) -> Frame {
        Frame::from(format!("{seq:0>width$}", width = bytes))
    }

    fn filled(seqs: std::ops::RangeInclusive<u64>, limits: HistoryLimits) -> History {
        let mut history = History::default();
        for seq in seqs {
            history.push(seq, frame(seq, 10), limits);
        }
        history
    }

    #[test]
    fn bounded_by_entries_and_by_bytes() {
        let by_count = filled(
            1..=10,
            HistoryLimits {
                max_entries: 3,
                ..ROOMY
            },
        );
        assert_eq!(by_count.oldest(), Some(8));
        let per_entry = 10 + ENTRY_OVERHEAD;
        let by_bytes = filled(
            1..=10,
            HistoryLimits {
                max_bytes: 4 * per_entry,
                ..ROOMY
            },
        );
        assert_eq!(by_bytes.oldest(), Some(7));
        assert_eq!(by_bytes.bytes(), 4 * per_entry);
        let mut one_big = History::default();
        one_big.push(
            1,
            frame(1, 500),
            HistoryLimits {
                max_bytes: 100,
                ..ROOMY
            },
        );
        assert_eq!(one_big.oldest(), Some(1), "the newest message stays");
        let off = filled(
            1..=3,
            HistoryLimits {
                max_entries: 0,
                ..ROOMY
            },
        );
        assert_eq!((off.oldest(), off.bytes()), (None, 0));
    }

    #[test]
    fn pages_start_after_since_and_report_gaps() {
        let history = filled(5..=9, ROOMY);
        let page = history.page(6, 9, 2, usize::MAX);
        assert_eq!((page.frames.len(), page.last, page.gap), (2, 8, false));
        let rest = history.page(page.last, 9, 10, usize::MAX);
        assert_eq!((rest.frames.len(), rest.last), (1, 9));
        let stops_at_until = history.page(4, 7, 10, usize::MAX);
        assert_eq!((stops_at_until.last, stops_at_until.gap), (7, false));
        let too_old = history.page(2, 9, 10, usize::MAX);
        assert_eq!((too_old.frames.len(), too_old.gap), (5, true));
        let by_bytes = history.page(4, 9, 10, 15);
        assert_eq!(by_bytes.frames.len(), 2, "stops once past the byte bound");
        let empty = History::default().page(0, 3, 10, usize::MAX);
        assert!(empty.gap && empty.frames.is_empty());
        assert!(!History::default().page(3, 3, 10, usize::MAX).gap);
    }

    #[test]
    fn the_fair_level_cuts_only_the_largest() {
        assert_eq!(fair_level(&mut [10, 10, 10], 100), usize::MAX);
        assert_eq!(fair_level(&mut [100, 10, 100], 110), 50);
        assert_eq!(fair_level(&mut [1000, 5, 1000, 1000], 305), 100);
        assert_eq!(fair_level(&mut [], 0), usize::MAX);
        assert_eq!(fair_level(&mut [7], 0), 0);
    }

    #[test]
    fn the_budget_tracks_what_is_added_and_freed() {
        let budget = HistoryBudget::new(1000);
        budget.charge(800, 0);
        assert!(!budget.is_over());
        budget.charge(300, 50);
        assert!(budget.is_over());
        budget.charge(0, 200);
        assert_eq!(budget.used(), 850);
        assert_eq!(budget.target(), 900);
    }
}
