//! The embedded broker's process-wide bounds: every room's history under one budget, and
//! frames that only members' feeds hold under another.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::LocalBroker;
use super::room::Room;
use crate::broker::history;

impl LocalBroker {
    /// Cuts the largest histories down to a common level, under the process-wide budget.
    pub(super) fn rebalance_histories(&self) {
        if self.rebalancing.swap(true, Ordering::Acquire) {
            return;
        }
        let rooms = self.all_rooms();
        let mut sizes: Vec<usize> = rooms.iter().map(|r| r.lock().history.bytes()).collect();
        let level = history::fair_level(&mut sizes, self.history_budget.target());
        for room in &rooms {
            let freed = room.lock().history.trim_to(level);
            self.history_budget.charge(0, freed);
        }
        self.rebalancing.store(false, Ordering::Release);
    }

    /// Frames that only members' feeds still hold (history holds the rest).
    pub(super) fn backlog_bytes(&self) -> usize {
        self.frames
            .alive()
            .saturating_sub(self.history_budget.used())
    }

    /// Past the backlog budget, cuts the members furthest behind until it holds again.
    pub(super) fn cut_largest_backlogs(&self) {
        if self.rebalancing.swap(true, Ordering::Acquire) {
            return;
        }
        let mut behind: Vec<(usize, Arc<Room>, u64)> = Vec::new();
        for room in self.all_rooms() {
            let state = room.lock();
            for member in &state.members {
                let backlog = member.feed.backlog();
                if backlog > 0 {
                    behind.push((backlog, Arc::clone(&room), member.id));
                }
            }
        }
        behind.sort_unstable_by_key(|entry| std::cmp::Reverse(entry.0));
        for (_, room, id) in behind {
            if self.backlog_bytes() <= self.max_backlog_bytes / 2 {
                break;
            }
            let mut state = room.lock();
            if let Some(at) = state.members.iter().position(|member| member.id == id) {
                state.members.swap_remove(at).feed.cut();
                self.metrics.slow_reader_dropped();
            }
        }
        self.rebalancing.store(false, Ordering::Release);
    }
}
