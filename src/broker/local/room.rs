//! One embedded room: its seq, history, members and presence, under one lock.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::feed::{FeedSender, Overflow};
use crate::broker::history::History;
use crate::broker::presence::{Announced, Change, Presence};
use crate::broker::{Delivery, Frame};
use crate::metrics::Metrics;
use crate::protocol;

pub(super) struct Room {
    pub name: String,
    pub epoch: String,
    state: Mutex<RoomState>,
}

pub(super) struct RoomState {
    /// Taken out of the broker's map: its last member left. A session cut just before may
    /// still publish into it; nothing is kept for it then.
    pub closed: bool,
    pub seq: u64,
    pub history: History,
    pub members: Vec<LocalMember>,
    next_member_id: u64,
    pub presence: Presence,
    /// The count members were last told, and when.
    announced: Announced,
}

/// A member as its room sees it. Its presence is the session's own (see `Member`): a member
/// cut from this list is still present until its session ends.
pub(super) struct LocalMember {
    pub id: u64,
    /// The other end is the session's `Membership::feed`.
    pub feed: FeedSender,
}

/// Who is told what about presence.
#[derive(Debug, Clone, Copy)]
pub(super) struct PresenceRules {
    pub linger: Duration,
    /// Users listed in a welcome.
    pub list: usize,
    /// Past this many present, joins and leaves are not announced one by one; the count is,
    /// at most every `presence::COUNT_EVERY`.
    pub events_max: u64,
}

impl Room {
    pub fn new(name: String, epoch: String) -> Room {
        Room {
            name,
            epoch,
            state: Mutex::new(RoomState {
                closed: false,
                seq: 0,
                history: History::default(),
                members: Vec::new(),
                next_member_id: 0,
                presence: Presence::default(),
                announced: Announced::default(),
            }),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, RoomState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RoomState {
    pub fn add_member(&mut self, feed: FeedSender) -> u64 {
        let id = self.next_member_id;
        self.next_member_id += 1;
        self.members.push(LocalMember { id, feed });
        id
    }

    /// A joiner alone here was told the count in its welcome: nobody needs it announced.
    pub fn welcomed_alone(&mut self, count: u64) {
        if self.members.len() == 1 {
            self.announced.told(count);
        }
    }

    pub fn remove_member(&mut self, id: u64) {
        self.members.retain(|member| member.id != id);
    }

    /// Queues `delivery` to every member, cutting the ones whose feed is full; returns how
    /// many took it and how many were cut.
    pub fn fan_out(&mut self, delivery: &Delivery) -> (u64, u64) {
        let (mut delivered, mut cut) = (0, 0);
        self.members
            .retain(|member| match member.feed.offer(delivery.clone()) {
                Ok(()) => {
                    delivered += 1;
                    true
                }
                Err(Overflow::Full) => {
                    member.feed.cut();
                    cut += 1;
                    false
                }
                Err(Overflow::Closed) => false,
            });
        (delivered, cut)
    }

    /// Tells the room about a join or a leave, unless it is too large for that.
    pub fn tell(&mut self, change: Change, rules: &PresenceRules, metrics: &Metrics) {
        let count = self.presence.count();
        if count > rules.events_max {
            return;
        }
        let frame = match change {
            Change::Joined(user) => protocol::presence_frame("join", &user, count),
            Change::Left(user) => protocol::presence_frame("leave", &user, count),
        };
        self.announced.told(count);
        self.notify(Frame::from(frame), metrics);
    }

    /// Announces the count if it changed without an event saying so (anonymous members, or
    /// a room too large for events): at once in a room small enough for events, at most
    /// every `presence::COUNT_EVERY` in a larger one.
    pub fn announce_count(&mut self, now: Instant, rules: &PresenceRules, metrics: &Metrics) {
        let count = self.presence.count();
        if !self.announced.due(count, rules.events_max, now) {
            return;
        }
        self.notify(Frame::from(protocol::members_frame(count)), metrics);
    }

    fn notify(&mut self, frame: Frame, metrics: &Metrics) {
        let (_, cut) = self.fan_out(&Delivery::Notice(frame));
        for _ in 0..cut {
            metrics.slow_reader_dropped();
        }
    }
}
