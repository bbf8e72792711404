//! Publishes waiting to go to Redis: one queue per room, taken in turn, so a flood in one
//! room never makes another room's messages wait behind it.
//!
//! Each publish gets a number when it is first sent, and carries the number of the one sent
//! before it from the same room. The publish script applies a number once, and refuses one
//! whose predecessor it has not seen, so a retried pipeline is applied exactly once and in
//! order even when Redis refused part of it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{Notify, oneshot};

use crate::broker::feed::WeakFeed;
use crate::broker::{Accepted, Delivery, Unavailable};
use crate::protocol::ChatParts;

/// One publish, held until Redis has applied it or refused it for good.
pub(super) struct Held {
    pub room: Arc<str>,
    pub chat: ChatParts,
    pub origin: Origin,
    /// This instance's number for it; 0 until first sent.
    pub number: u64,
    /// The number sent before it from the same room; 0 when none is pending.
    pub previous: u64,
    /// When Redis first answered it with an error.
    pub failing_since: Option<Instant>,
}

/// Who is waiting to hear how a publish went.
pub(super) enum Origin {
    /// A member's session, told only if the publish finally fails.
    Member(WeakFeed),
    /// A publish API request, waiting for the seq; its key makes a retried request publish once.
    Api {
        reply: oneshot::Sender<Result<Accepted, Unavailable>>,
        idempotency: String,
    },
}

impl Origin {
    /// Redis applied the publish, now or (a retry after a lost reply) before, when the
    /// reply carries no seq: a member hears nothing either way; an API caller gets the seq,
    /// or `Unavailable` when it is not known.
    pub fn applied(self, accepted: Option<Accepted>) {
        if let Origin::Api { reply, .. } = self {
            let _ = reply.send(accepted.ok_or(Unavailable));
        }
    }

    /// Tells the publisher of the outcome.
    pub fn settle(self, outcome: Result<Accepted, Unavailable>) {
        match (self, outcome) {
            (Origin::Member(_), Ok(_)) => {}
            (Origin::Member(feed), Err(Unavailable)) => feed.offer(Delivery::PublishFailed),
            (Origin::Api { reply, .. }, outcome) => {
                let _ = reply.send(outcome);
            }
        }
    }
}

pub(super) struct HoldQueue {
    state: Mutex<State>,
    /// Wakes the publisher when something is queued.
    pub ready: Notify,
    /// Wakes senders waiting for room in the queue.
    pub space: Notify,
    max_held: usize,
    /// Bytes of messages held, over every room.
    max_bytes: usize,
    max_per_room: usize,
}

#[derive(Default)]
struct State {
    rooms: HashMap<Arc<str>, RoomQueue>,
    /// Rooms with pending publishes, in the order they get their next turn.
    turns: VecDeque<Arc<str>>,
    /// Pending and in flight, over every room...
    held: usize,
    /// ...and their bytes.
    held_bytes: usize,
    next_number: u64,
}

#[derive(Default)]
struct RoomQueue {
    pending: VecDeque<Held>,
    /// Taken by the publisher and not yet settled.
    in_flight: usize,
    /// The number of the last publish sent from this room.
    last_number: u64,
}

/// The queue (or the room's share of it) is full.
pub(super) struct Full(pub Box<Held>);

impl std::fmt::Debug for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Full({})", self.0.room)
    }
}

impl HoldQueue {
    pub fn new(max_held: usize, max_bytes: usize) -> HoldQueue {
        HoldQueue {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            space: Notify::new(),
            max_held,
            max_bytes,
            // No room may take more than a quarter of a large queue.
            max_per_room: (max_held / 4).max(max_held.min(16)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, held: Held) -> Result<(), Full> {
        let mut state = self.lock();
        let bytes = held.chat.len();
        if state.held >= self.max_held || state.held_bytes + bytes > self.max_bytes {
            return Err(Full(Box::new(held)));
        }
        let room = Arc::clone(&held.room);
        let queue = state.rooms.entry(Arc::clone(&room)).or_default();
        if queue.pending.len() + queue.in_flight >= self.max_per_room {
            return Err(Full(Box::new(held)));
        }
        let was_idle = queue.pending.is_empty();
        queue.pending.push_back(held);
        state.held += 1;
        state.held_bytes += bytes;
        if was_idle {
            state.turns.push_back(room);
        }
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    pub fn held(&self) -> usize {
        self.lock().held
    }

    /// Up to `max_items` publishes (and about `max_bytes`), one room at a time in turn,
    /// each room's in its order, numbered for the script.
    pub fn take(&self, max_items: usize, max_bytes: usize) -> Vec<Held> {
        self.take_where(max_items, max_bytes, |_| true)
    }

    /// As [`take`](HoldQueue::take), from the rooms `ready` accepts; the others keep their
    /// turn (on a cluster: rooms whose node is busy or waiting). A room with publishes
    /// taken before and not yet settled waits too: its next ones must not overtake them on
    /// another node, when its slot moved meanwhile.
    pub fn take_where(
        &self,
        max_items: usize,
        max_bytes: usize,
        ready: impl Fn(&str) -> bool,
    ) -> Vec<Held> {
        let mut state = self.lock();
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut skipped = Vec::new();
        let mut taking: Vec<Arc<str>> = Vec::new();
        while batch.len() < max_items && bytes < max_bytes {
            let Some(room) = state.turns.pop_front() else {
                break;
            };
            let in_flight = state.rooms.get(&room).map_or(0, |queue| queue.in_flight);
            if !ready(&room) || (in_flight > 0 && !taking.contains(&room)) {
                skipped.push(room);
                continue;
            }
            if in_flight == 0 {
                taking.push(Arc::clone(&room));
            }
            let state = &mut *state;
            let Some(queue) = state.rooms.get_mut(&room) else {
                continue;
            };
            let Some(mut held) = queue.pending.pop_front() else {
                continue;
            };
            if held.number == 0 {
                state.next_number += 1;
                held.number = state.next_number;
                held.previous = queue.last_number;
                queue.last_number = held.number;
            }
            queue.in_flight += 1;
            bytes += held.chat.len();
            if !queue.pending.is_empty() {
                state.turns.push_back(room);
            }
            batch.push(held);
        }
        for room in skipped.into_iter().rev() {
            state.turns.push_front(room);
        }
        batch
    }

    /// Puts publishes that were not applied back at the front of their rooms, in order.
    pub fn restore(&self, returned: Vec<Held>) {
        let mut state = self.lock();
        for held in returned.into_iter().rev() {
            let room = Arc::clone(&held.room);
            let queue = state.rooms.entry(Arc::clone(&room)).or_default();
            queue.in_flight = queue.in_flight.saturating_sub(1);
            let was_idle = queue.pending.is_empty();
            queue.pending.push_front(held);
            if was_idle {
                state.turns.push_front(room);
            }
        }
        drop(state);
        self.ready.notify_one();
    }

    /// A publish is settled: applied, or given up on. Giving one up renumbers the publishes
    /// queued after it in its room, which the script would otherwise refuse for ever.
    pub fn settle(&self, held: &Held, applied: bool) {
        let mut state = self.lock();
        state.held = state.held.saturating_sub(1);
        state.held_bytes = state.held_bytes.saturating_sub(held.chat.len());
        if let Some(queue) = state.rooms.get_mut(&held.room) {
            queue.in_flight = queue.in_flight.saturating_sub(1);
            if !applied {
                queue.last_number = held.previous;
                for later in &mut queue.pending {
                    later.number = 0;
                }
            }
            if queue.pending.is_empty() && queue.in_flight == 0 {
                state.rooms.remove(&held.room);
            }
        }
        drop(state);
        self.space.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::feed;

    fn held(room: &str, message: &str) -> Held {
        let (sender, feed) = feed::channel(1, 1);
        drop(feed);
        Held {
            room: Arc::from(room),
            chat: ChatParts::new(message, None, 0),
            origin: Origin::Member(sender.downgrade()),
            number: 0,
            previous: 0,
            failing_since: None,
        }
    }

    fn messages(batch: &[Held]) -> Vec<String> {
        batch
            .iter()
            .map(|h| format!("{}:{}", h.room, h.chat.prefix.split('"').nth(3).unwrap()))
            .collect()
    }

    #[test]
    fn a_retry_applied_before_is_no_failure_for_its_sender() {
        let (sender, mut feed) = feed::channel(4, 1024);
        Origin::Member(sender.downgrade()).applied(None);
        assert!(
            feed.try_recv().is_none(),
            "applied before a lost reply: not failed"
        );
        let (reply, answer) = oneshot::channel();
        let api = Origin::Api {
            reply,
            idempotency: "k".into(),
        };
        api.applied(None);
        assert!(
            matches!(answer.blocking_recv(), Ok(Err(Unavailable))),
            "no seq to give"
        );
    }

    #[test]
    fn rooms_take_turns_and_keep_their_order() {
        let queue = HoldQueue::new(100, usize::MAX);
        for n in 0..5 {
            queue.push(held("flood", &n.to_string())).unwrap();
        }
        queue.push(held("quiet", "q")).unwrap();
        let batch = queue.take(3, usize::MAX);
        assert_eq!(messages(&batch), ["flood:0", "quiet:q", "flood:1"]);
        let numbers: Vec<(u64, u64)> = batch.iter().map(|h| (h.number, h.previous)).collect();
        assert_eq!(numbers, [(1, 0), (2, 0), (3, 1)]);
    }

    #[test]
    fn rooms_not_ready_keep_their_turn() {
        let queue = HoldQueue::new(100, usize::MAX);
        for room in ["a", "b", "c"] {
            queue.push(held(room, "1")).unwrap();
        }
        let batch = queue.take_where(10, usize::MAX, |room| room == "b");
        assert_eq!(messages(&batch), ["b:1"]);
        queue.settle(&batch[0], true);
        queue.push(held("b", "2")).unwrap();
        assert_eq!(messages(&queue.take(10, usize::MAX)), ["a:1", "c:1", "b:2"]);
    }

    #[test]
    fn a_room_with_publishes_in_flight_waits_for_them() {
        let queue = HoldQueue::new(100, usize::MAX);
        queue.push(held("r", "1")).unwrap();
        queue.push(held("r", "2")).unwrap();
        let first = queue.take(10, usize::MAX);
        assert_eq!(
            messages(&first),
            ["r:1", "r:2"],
            "one take may send several"
        );
        queue.push(held("r", "3")).unwrap();
        queue.push(held("s", "1")).unwrap();
        assert_eq!(messages(&queue.take(10, usize::MAX)), ["s:1"]);
        for held in &first {
            queue.settle(held, true);
        }
        assert_eq!(messages(&queue.take(10, usize::MAX)), ["r:3"]);
    }

    #[test]
    fn one_room_cannot_take_the_whole_queue() {
        let queue = HoldQueue::new(80, usize::MAX);
        for n in 0..20 {
            queue.push(held("flood", &n.to_string())).unwrap();
        }
        assert!(queue.push(held("flood", "2")).is_err());
        assert!(queue.push(held("other", "x")).is_ok());
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let queue = HoldQueue::new(100, 120);
        queue.push(held("a", &"x".repeat(60))).unwrap();
        assert!(queue.push(held("b", &"y".repeat(60))).is_err());
        assert!(queue.push(held("b", "y")).is_ok());
    }

    #[test]
    fn restored_publishes_go_first_with_their_numbers() {
        let queue = HoldQueue::new(100, usize::MAX);
        for n in 0..3 {
            queue.push(held("r", &n.to_string())).unwrap();
        }
        let batch = queue.take(2, usize::MAX);
        queue.restore(batch);
        let again = queue.take(10, usize::MAX);
        assert_eq!(messages(&again), ["r:0", "r:1", "r:2"]);
        let numbers: Vec<u64> = again.iter().map(|h| h.number).collect();
        assert_eq!(numbers, [1, 2, 3]);
    }

    #[test]
    fn giving_one_up_renumbers_what_was_sent_with_it() {
        let queue = HoldQueue::new(100, usize::MAX);
        for n in 0..3 {
            queue.push(held("r", &n.to_string())).unwrap();
        }
        let mut batch = queue.take(10, usize::MAX);
        let later = batch.split_off(1);
        // The first was refused for good; the two after it were refused as gaps.
        queue.restore(later);
        queue.settle(&batch[0], false);
        queue.push(held("r", "3")).unwrap();
        let retried = queue.take(10, usize::MAX);
        assert_eq!(messages(&retried), ["r:1", "r:2", "r:3"]);
        let chain: Vec<(u64, u64)> = retried.iter().map(|h| (h.number, h.previous)).collect();
        assert_eq!(chain, [(4, 0), (5, 4), (6, 5)]);
    }

    #[test]
    fn giving_one_up_renumbers_what_follows() {
        let queue = HoldQueue::new(100, usize::MAX);
        for n in 0..3 {
            queue.push(held("r", &n.to_string())).unwrap();
        }
        let mut batch = queue.take(10, usize::MAX);
        queue.settle(&batch[0], true);
        let mut rest = batch.split_off(1);
        let later = rest.split_off(1);
        queue.restore(later);
        queue.settle(&rest[0], false);
        let retried = queue.take(10, usize::MAX);
        assert_eq!(messages(&retried), ["r:2"]);
        assert_eq!((retried[0].number, retried[0].previous), (4, 1));
        assert_eq!(queue.held(), 1);
    }
}
