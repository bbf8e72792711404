//! The embedded broker: in-process rooms ([room]) with per-room seqs, a bounded history,
//! presence, and the process-wide [budgets].

mod budgets;
mod room;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::feed;
use super::history::{HistoryBudget, HistoryLimits};
use super::ledger::FrameLedger;
use super::presence::Visitor;
use super::recent::RecentPublishes;
use super::{
    Accepted, Delivery, MemberHandle, Membership, PAGE_BYTES, PAGE_FRAMES, Page, Resume,
    plan_replay,
};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::ChatParts;
use room::{PresenceRules, Room};

pub struct LocalBroker {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    limits: HistoryLimits,
    /// Every room's history together.
    history_budget: HistoryBudget,
    /// One rebalance of the histories (or cut of backlogs) at a time.
    rebalancing: AtomicBool,
    frames: Arc<FrameLedger>,
    /// Frames held for members beyond what history holds, past which the members furthest
    /// behind are cut.
    max_backlog_bytes: usize,
    send_queue: usize,
    send_queue_bytes: usize,
    presence: PresenceRules,
    metrics: Arc<Metrics>,
    /// Makes epochs unique across restarts, so a resume after one is told to reset.
    epoch_prefix: u64,
    rooms_created: AtomicU64,
    /// API publishes by idempotency key, for their retries.
    recent: Mutex<RecentPublishes>,
}

/// A session's place in a room; leaves the room when dropped.
pub struct Member {
    broker: Arc<LocalBroker>,
    room: Arc<Room>,
    id: u64,
    /// Its user's id, for presence: the user stays present while any session of theirs does.
    user: Option<String>,
}

/// How often lingering users are let go and empty rooms freed.
pub const TICK: Duration = Duration::from_secs(1);

impl LocalBroker {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Arc<LocalBroker> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Arc::new(LocalBroker {
            rooms: Mutex::new(HashMap::new()),
            limits: HistoryLimits {
                max_entries: config.history,
                max_bytes: config.history_bytes,
            },
            history_budget: HistoryBudget::new(config.history_budget_bytes),
            rebalancing: AtomicBool::new(false),
            frames: Arc::new(FrameLedger::default()),
            max_backlog_bytes: config.backlog_budget_bytes,
            send_queue: config.send_queue,
            send_queue_bytes: config.send_queue_bytes,
            presence: PresenceRules {
                linger: config.presence_linger,
                list: config.presence_list,
                events_max: config.presence_events_max,
            },
            metrics,
            epoch_prefix: now.as_micros() as u64,
            rooms_created: AtomicU64::new(0),
            recent: Mutex::new(RecentPublishes::default()),
        })
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Arc<Room>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The room, created if it does not exist.
    fn room(&self, room_name: &str) -> Arc<Room> {
        self.room_in(&mut self.rooms(), room_name)
    }

    fn room_in(&self, rooms: &mut HashMap<String, Arc<Room>>, room_name: &str) -> Arc<Room> {
        let room = rooms
            .entry(room_name.to_string())
            .or_insert_with(|| {
                let serial = self.rooms_created.fetch_add(1, Ordering::Relaxed);
                let epoch = format!("{:x}.{serial:x}", self.epoch_prefix);
                Arc::new(Room::new(room_name.to_string(), epoch))
            })
            .clone();
        self.metrics.rooms_now(rooms.len());
        room
    }

    pub fn join(
        self: &Arc<Self>,
        room_name: &str,
        resume: Option<Resume>,
        visitor: Option<Visitor>,
    ) -> Membership {
        let (sender, feed) = feed::channel(self.send_queue, self.send_queue_bytes);
        // The map stays locked until the room is: its last member cannot free it in between.
        let mut rooms = self.rooms();
        let room = self.room_in(&mut rooms, room_name);
        let mut state = room.lock();
        drop(rooms);
        let arrived = state
            .presence
            .arrive(visitor.as_ref().map(|v| (v.id.as_str(), &v.user)));
        if let Some(change) = arrived {
            state.tell(change, &self.presence, &self.metrics);
        }
        let id = state.add_member(sender);
        let members = state.presence.members(self.presence.list);
        state.welcomed_alone(members.count);
        let replay = plan_replay(
            resume.as_ref(),
            &room.epoch,
            state.seq,
            state.history.oldest(),
        );
        let seq = state.seq;
        drop(state);
        let epoch = room.epoch.clone();
        let member = Member {
            broker: Arc::clone(self),
            room,
            id,
            user: visitor.map(|v| v.id),
        };
        Membership::new(feed, epoch, seq, replay, MemberHandle::Local(member)).with_members(members)
    }

    fn leave(&self, room: &Arc<Room>, id: u64, user: Option<&str>) {
        let mut rooms = self.rooms();
        let mut state = room.lock();
        state.remove_member(id);
        let departed = state
            .presence
            .depart(user, Instant::now(), self.presence.linger);
        if let Some(change) = departed {
            state.tell(change, &self.presence, &self.metrics);
        }
        self.free_if_empty(&mut rooms, room, &mut state);
    }

    /// Frees a room with no member and nobody lingering.
    fn free_if_empty(
        &self,
        rooms: &mut HashMap<String, Arc<Room>>,
        room: &Arc<Room>,
        state: &mut room::RoomState,
    ) {
        if state.members.is_empty() && state.presence.count() == 0 {
            self.free(rooms, room, state);
        }
    }

    /// Takes an empty room out of the map, with its history.
    fn free(
        &self,
        rooms: &mut HashMap<String, Arc<Room>>,
        room: &Arc<Room>,
        state: &mut room::RoomState,
    ) {
        let is_current = rooms
            .get(&room.name)
            .is_some_and(|current| Arc::ptr_eq(current, room));
        if !is_current {
            return;
        }
        rooms.remove(&room.name);
        state.closed = true;
        let freed = state.history.trim_to(0);
        self.history_budget.charge(0, freed);
        self.metrics.rooms_now(rooms.len());
    }

    /// Lets users whose linger ran out leave, announces changed counts, and frees rooms
    /// nobody is in any more.
    pub fn tick(&self, now: Instant) {
        let mut empty = Vec::new();
        for room in self.all_rooms() {
            let mut state = room.lock();
            for change in state.presence.expire(now) {
                state.tell(change, &self.presence, &self.metrics);
            }
            state.announce_count(now, &self.presence, &self.metrics);
            let nobody = state.members.is_empty() && state.presence.count() == 0;
            drop(state);
            if nobody {
                empty.push(room);
            }
        }
        let mut rooms = self.rooms();
        for room in empty {
            let mut state = room.lock();
            self.free_if_empty(&mut rooms, &room, &mut state);
        }
    }

    /// Every room, without holding the map while each room is locked.
    fn all_rooms(&self) -> Vec<Arc<Room>> {
        self.rooms().values().cloned().collect()
    }

    pub fn frame_bytes(&self) -> usize {
        self.frames.alive()
    }

    /// Who is in a room: a count, and up to `list` users.
    pub fn presence(&self, room_name: &str, list: usize) -> super::presence::Members {
        let room = self.rooms().get(room_name).cloned();
        room.map(|room| room.lock().presence.members(list))
            .unwrap_or_default()
    }

    #[cfg(test)]
    fn room_count(&self) -> usize {
        self.rooms().len()
    }
}

impl Member {
    pub fn publish(&self, chat: &ChatParts) {
        self.broker.publish_in(&self.room, chat);
    }

    /// Frames after `after` up to `until`, shared with the history, a page at a time.
    pub fn replay_page(&self, after: u64, until: u64) -> Page {
        let state = self.room.lock();
        state.history.page(after, until, PAGE_FRAMES, PAGE_BYTES)
    }
}

impl LocalBroker {
    /// Publishes for the API, without a membership. A room nobody is in keeps nothing (it is
    /// freed with its last member), so the message reaches no one, but it gets a seq; the
    /// same idempotency key gets the same answer.
    pub fn publish(
        self: &Arc<Self>,
        room_name: &str,
        chat: &ChatParts,
        idempotency: &str,
    ) -> Accepted {
        if idempotency.is_empty() {
            return self.publish_once(room_name, chat);
        }
        // Checked, published and recorded under one lock, so concurrent retries publish once.
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(done) = recent.get(room_name, idempotency) {
            return done;
        }
        let accepted = self.publish_once(room_name, chat);
        recent.insert(room_name, idempotency, accepted.clone());
        accepted
    }

    fn publish_once(self: &Arc<Self>, room_name: &str, chat: &ChatParts) -> Accepted {
        let room = self.room(room_name);
        let accepted = self.publish_in(&room, chat);
        let mut rooms = self.rooms();
        self.free_if_empty(&mut rooms, &room, &mut room.lock());
        accepted
    }

    /// Assigns the next seq, encodes the frame once and queues it to every member. A member
    /// whose feed is full is cut: its session tells it to resume with `since`, so one slow
    /// reader never slows the room.
    fn publish_in(&self, room: &Arc<Room>, chat: &ChatParts) -> Accepted {
        let mut state = room.lock();
        state.seq += 1;
        let seq = state.seq;
        let frame = self.frames.frame(chat.with_seq(seq));
        let (added, freed) = if state.closed {
            (0, 0)
        } else {
            state.history.push(seq, frame.clone(), self.limits)
        };
        let (delivered, cut) = state.fan_out(&Delivery::Chat(frame));
        drop(state);
        self.history_budget.charge(added, freed);
        self.metrics.frames_queued(delivered);
        for _ in 0..cut {
            self.metrics.slow_reader_dropped();
        }
        if self.history_budget.is_over() {
            self.rebalance_histories();
        }
        if self.backlog_bytes() > self.max_backlog_bytes {
            self.cut_largest_backlogs();
        }
        Accepted {
            seq,
            epoch: room.epoch.clone(),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.broker.leave(&self.room, self.id, self.user.as_deref());
    }
}

#[cfg(test)]
mod tests;
