//! One room as an instance sees it: its local members, the last seq fanned out to them, and
//! how a message from pub/sub or a page of history reaches them in order. No I/O here: the
//! room task (`subscriber.rs`) brings the messages and pages.

use tokio::time::Instant;

use crate::broker::feed::{self, Feed, FeedSender, Overflow, WeakFeed};
use crate::broker::presence::Announced;
use crate::broker::{Delivery, Frame};
use crate::metrics::Metrics;
use crate::protocol::{self, ResetReason};

pub(super) struct RemoteMember {
    pub id: u64,
    /// Only messages after this seq go to this member: earlier ones are in its replay.
    pub live_after: u64,
    /// The other end is the session's `Membership::feed`.
    pub feed: FeedSender,
}

pub(super) struct Room {
    pub epoch: String,
    /// The last seq fanned out here; the next one must be `delivered + 1`.
    pub delivered: u64,
    pub members: Vec<RemoteMember>,
    next_member_id: u64,
    /// The presence count members were last told, and when.
    announced: Announced,
}

/// What to do with a message that arrived on the room's channel.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Seen already (a retry or a gap fill got there first).
    Duplicate,
    /// The next one: fan it out.
    Next,
    /// Messages are missing before it, or it is from another epoch: fill from the stream.
    Gap,
}

impl Room {
    pub fn new(epoch: String, delivered: u64) -> Room {
        Room {
            epoch,
            delivered,
            members: Vec::new(),
            next_member_id: 0,
            announced: Announced::default(),
        }
    }

    /// A joiner alone here was told the count in its welcome: nobody needs it announced.
    pub fn welcomed_alone(&mut self, count: u64) {
        if self.members.len() == 1 {
            self.announced.told(count);
        }
    }

    /// A new member's id, its feed, and a handle on the feed that does not keep it open.
    pub fn add_member(&mut self, live_after: u64, queue: (usize, usize)) -> (u64, Feed, WeakFeed) {
        let (sender, feed) = feed::channel(queue.0, queue.1);
        let weak = sender.downgrade();
        let id = self.next_member_id;
        self.next_member_id += 1;
        self.members.push(RemoteMember {
            id,
            live_after,
            feed: sender,
        });
        (id, feed, weak)
    }

    pub fn forget(&mut self, id: u64) {
        self.members.retain(|member| member.id != id);
    }

    pub fn arrival(&self, seq: u64, epoch: &str) -> Arrival {
        if epoch != self.epoch || seq > self.delivered + 1 {
            Arrival::Gap
        } else if seq <= self.delivered {
            Arrival::Duplicate
        } else {
            Arrival::Next
        }
    }

    /// Queues message `seq` to every member that should see it, cutting the ones that lag.
    pub fn fan_out(&mut self, seq: u64, frame: &Frame, metrics: &Metrics) {
        let mut delivered = 0;
        self.members.retain(|member| {
            if member.live_after >= seq {
                return true;
            }
            match member.feed.offer(Delivery::Chat(frame.clone())) {
                Ok(()) => {
                    delivered += 1;
                    true
                }
                Err(Overflow::Full) => {
                    member.feed.cut();
                    metrics.slow_reader_dropped();
                    false
                }
                Err(Overflow::Closed) => false,
            }
        });
        self.delivered = self.delivered.max(seq);
        metrics.frames_queued(delivered);
    }

    /// Fans out a page of the stream that should follow `delivered`; a page that starts
    /// later means history was lost in between, and members are told so.
    pub fn absorb(&mut self, page: Vec<(u64, Frame)>, metrics: &Metrics) {
        if page
            .first()
            .is_some_and(|(seq, _)| *seq > self.delivered + 1)
        {
            self.notify_reset(ResetReason::History);
        }
        for (seq, frame) in page {
            if seq > self.delivered {
                self.fan_out(seq, &frame, metrics);
            }
        }
    }

    /// Messages up to `until` are gone from the stream: skip them, telling members.
    pub fn skip_to(&mut self, until: u64) {
        if until > self.delivered {
            self.notify_reset(ResetReason::History);
            self.delivered = until;
        }
    }

    /// Redis lost the room and started it again: members resync from the new epoch's start.
    pub fn move_to_epoch(&mut self, epoch: String) {
        self.epoch = epoch;
        self.delivered = 0;
        for member in &mut self.members {
            member.live_after = 0;
        }
        self.notify_reset(ResetReason::Epoch);
    }

    /// A join or leave from the presence scripts, for members here but `except` (a member
    /// of this instance that joined: its welcome told it).
    pub fn tell_presence(
        &mut self,
        kind: &str,
        count: u64,
        user: &str,
        except: Option<u64>,
        metrics: &Metrics,
    ) {
        self.announced.told(count);
        let frame = Frame::from(protocol::presence_frame(kind, user, count));
        self.notify(frame, except.filter(|_| kind == "join"), metrics);
    }

    /// Announces the count if it changed without an event saying so: at once in a room
    /// small enough for events (`events_max`), at most every `presence::COUNT_EVERY` in a larger one.
    pub fn announce_count(&mut self, count: u64, events_max: u64, now: Instant, metrics: &Metrics) {
        if !self.announced.due(count, events_max, now) {
            return;
        }
        self.notify(Frame::from(protocol::members_frame(count)), None, metrics);
    }

    fn notify(&mut self, frame: Frame, except: Option<u64>, metrics: &Metrics) {
        self.members.retain(|member| {
            if Some(member.id) == except {
                return true;
            }
            match member.feed.offer(Delivery::Notice(frame.clone())) {
                Ok(()) => true,
                Err(Overflow::Full) => {
                    member.feed.cut();
                    metrics.slow_reader_dropped();
                    false
                }
                Err(Overflow::Closed) => false,
            }
        });
    }

    fn notify_reset(&mut self, reason: ResetReason) {
        let frame = Frame::from(protocol::reset_frame(&self.epoch, self.delivered, reason));
        self.members.retain(|member| {
            let kept = member.feed.offer(Delivery::Notice(frame.clone())).is_ok();
            if !kept {
                member.feed.cut();
            }
            kept
        });
    }
}

/// Cuts the members with the most queued, largest first, while `over()` holds: when frames
/// that only feeds hold pass the instance's budget, the readers furthest behind go first.
pub(super) fn cut_largest_backlogs<'a>(
    rooms: impl Iterator<Item = &'a mut Room>,
    over: impl Fn() -> bool,
    metrics: &Metrics,
) {
    let mut rooms: Vec<&mut Room> = rooms.collect();
    let mut behind: Vec<(usize, usize, u64)> = Vec::new();
    for (index, room) in rooms.iter().enumerate() {
        for member in &room.members {
            let backlog = member.feed.backlog();
            if backlog > 0 {
                behind.push((backlog, index, member.id));
            }
        }
    }
    behind.sort_unstable_by_key(|entry| std::cmp::Reverse(entry.0));
    for (_, index, id) in behind {
        if !over() {
            break;
        }
        let room = &mut rooms[index];
        if let Some(at) = room.members.iter().position(|member| member.id == id) {
            room.members.swap_remove(at).feed.cut();
            metrics.slow_reader_dropped();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(seqs: std::ops::RangeInclusive<u64>) -> Vec<(u64, Frame)> {
        seqs.map(|seq| (seq, Frame::from(format!("m{seq}"))))
            .collect()
    }

    fn drain(feed: &mut Feed) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(delivery) = feed.try_recv() {
            seen.push(match delivery {
                Delivery::Chat(frame) => frame.to_string(),
                Delivery::Notice(frame) => {
                    let reset: serde_json::Value = serde_json::from_str(&frame).unwrap();
                    format!("reset:{}", reset["reason"].as_str().unwrap())
                }
                Delivery::PublishFailed => "failed".into(),
            });
        }
        seen
    }

    const QUEUE: (usize, usize) = (16, 1 << 20);

    #[test]
    fn arrivals_are_sorted_by_seq_and_epoch() {
        let room = Room::new("e1".into(), 5);
        assert_eq!(room.arrival(6, "e1"), Arrival::Next);
        assert_eq!(room.arrival(5, "e1"), Arrival::Duplicate);
        assert_eq!(room.arrival(8, "e1"), Arrival::Gap);
        assert_eq!(room.arrival(1, "e2"), Arrival::Gap);
    }

    #[test]
    fn members_get_only_what_follows_their_replay() {
        let metrics = Metrics::default();
        let mut room = Room::new("e1".into(), 3);
        let (_, mut early, _) = room.add_member(3, QUEUE);
        let (_, mut late, _) = room.add_member(5, QUEUE);
        room.absorb(frames(4..=6), &metrics);
        assert_eq!(drain(&mut early), ["m4", "m5", "m6"]);
        assert_eq!(drain(&mut late), ["m6"]);
        assert_eq!(room.delivered, 6);
    }

    #[test]
    fn lost_history_and_new_epochs_are_told_before_what_follows() {
        let metrics = Metrics::default();
        let mut room = Room::new("e1".into(), 3);
        let (_, mut member, _) = room.add_member(3, QUEUE);
        room.absorb(frames(6..=7), &metrics);
        assert_eq!(drain(&mut member), ["reset:history", "m6", "m7"]);
        room.skip_to(9);
        room.skip_to(9);
        assert_eq!(drain(&mut member), ["reset:history"]);
        room.move_to_epoch("e2".into());
        room.absorb(frames(1..=2), &metrics);
        assert_eq!(drain(&mut member), ["reset:epoch", "m1", "m2"]);
    }

    #[test]
    fn a_member_that_lags_is_cut_and_the_rest_carry_on() {
        let metrics = Metrics::default();
        let mut room = Room::new("e1".into(), 0);
        let (_, mut slow, _) = room.add_member(0, (2, 1 << 20));
        let (_, mut fast, _) = room.add_member(0, QUEUE);
        room.absorb(frames(1..=3), &metrics);
        assert!(drain(&mut slow).is_empty(), "its queue was freed when cut");
        assert_eq!(drain(&mut fast).len(), 3);
        assert_eq!(room.members.len(), 1);
    }
}
