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
            state.announce_count(now, &self.metrics);
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
        let remember = !idempotency.is_empty();
        if remember
            && let Some(done) = self
                .recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(room_name, idempotency)
        {
            return done;
        }
        let room = self.room(room_name);
        let accepted = self.publish_in(&room, chat);
        let mut rooms = self.rooms();
        self.free_if_empty(&mut rooms, &room, &mut room.lock());
        if remember {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            recent.insert(room_name, idempotency, accepted.clone());
        }
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
mod tests {
    use super::*;
    use crate::broker::{Feed, Replay};

    fn broker(history: usize, queue: usize) -> Arc<LocalBroker> {
        let config = Config {
            history,
            send_queue: queue,
            ..Config::default()
        };
        LocalBroker::new(&config, Arc::new(Metrics::default()))
    }

    fn chat_text(delivery: Delivery) -> String {
        match delivery {
            Delivery::Chat(frame) => frame.to_string(),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn publish(membership: &Membership, message: &str) {
        match &membership.handle {
            MemberHandle::Local(member) => member.publish(&ChatParts::new(message, None, 9)),
            MemberHandle::Redis(_) => unreachable!("a local broker hands out local members"),
        }
    }

    fn next(feed: &mut Feed) -> String {
        chat_text(feed.try_recv().expect("a delivery"))
    }

    #[test]
    fn members_get_every_message_in_order_with_seqs() {
        let broker = broker(10, 16);
        let mut alice = broker.join("lobby", None, None);
        let mut bob = broker.join("lobby", None, None);
        publish(&alice, "one");
        publish(&bob, "two");
        for member in [&mut alice, &mut bob] {
            assert_eq!(
                next(&mut member.feed),
                r#"{"message":"one","seq":1,"ts":9}"#
            );
            assert_eq!(
                next(&mut member.feed),
                r#"{"message":"two","seq":2,"ts":9}"#
            );
        }
    }

    #[test]
    fn rooms_are_isolated_and_freed_when_empty() {
        let broker = broker(10, 16);
        let lobby = broker.join("lobby", None, None);
        let mut other = broker.join("other", None, None);
        publish(&lobby, "hi");
        assert!(other.feed.try_recv().is_none());
        assert_eq!(broker.room_count(), 2);
        let first_epoch = lobby.epoch.clone();
        drop(lobby);
        assert_eq!(broker.room_count(), 1);
        assert_eq!(broker.history_budget.used(), 0, "its history is freed");
        let again = broker.join("lobby", None, None);
        assert_eq!(again.seq, 0);
        assert_ne!(again.epoch, first_epoch);
    }

    #[test]
    fn resume_replays_from_history_a_page_at_a_time() {
        let broker = broker(3, 16);
        let keeper = broker.join("lobby", None, None);
        for n in 1..=5 {
            publish(&keeper, &n.to_string());
        }
        let since = |since| {
            Some(Resume::Since {
                since,
                epoch: Some(keeper.epoch.clone()),
            })
        };
        let resumed = broker.join("lobby", since(3), None);
        assert!(matches!(
            resumed.replay,
            Replay::From {
                after: 3,
                reset: None,
                ..
            }
        ));
        let MemberHandle::Local(member) = &resumed.handle else {
            unreachable!()
        };
        let page = member.replay_page(3, resumed.seq);
        assert_eq!((page.frames.len(), page.last, page.gap), (2, 5, false));
        let trimmed = broker.join("lobby", since(1), None);
        assert!(matches!(
            trimmed.replay,
            Replay::From { reset: Some(_), .. }
        ));
    }

    #[test]
    fn a_full_feed_cuts_only_that_member() {
        let broker = broker(0, 2);
        let mut slow = broker.join("lobby", None, None);
        let mut fast = broker.join("lobby", None, None);
        for n in 0..3 {
            publish(&fast, &n.to_string());
            fast.feed.try_recv().unwrap();
        }
        assert!(
            slow.feed.try_recv().is_none(),
            "a cut member's queue is freed"
        );
        publish(&fast, "still here");
        assert!(fast.feed.try_recv().is_some());
        assert_eq!(broker.metrics.read("roomcast_slow_reader_drops_total"), 1);
    }

    #[test]
    fn histories_share_one_budget_and_the_largest_give_way() {
        let config = Config {
            history: 1000,
            history_bytes: 1 << 20,
            history_budget_bytes: 64 * 1024,
            ..Config::default()
        };
        let broker = LocalBroker::new(&config, Arc::new(Metrics::default()));
        let quiet = broker.join("quiet", None, None);
        publish(&quiet, "small");
        let loud: Vec<Membership> = (0..4)
            .map(|n| broker.join(&format!("loud{n}"), None, None))
            .collect();
        let big = "x".repeat(4000);
        for _ in 0..10 {
            for member in &loud {
                publish(member, &big);
            }
        }
        assert!(broker.history_budget.used() <= 64 * 1024);
        let MemberHandle::Local(member) = &quiet.handle else {
            unreachable!()
        };
        assert_eq!(
            member.replay_page(0, 1).frames.len(),
            1,
            "the quiet room kept its message"
        );
    }

    #[test]
    fn a_publish_into_a_room_freed_meanwhile_keeps_nothing() {
        let broker = broker(10, 16);
        let member = broker.join("lobby", None, None);
        let MemberHandle::Local(handle) = &member.handle else {
            unreachable!()
        };
        let room = Arc::clone(&handle.room);
        drop(member);
        broker.publish_in(&room, &ChatParts::new("late", None, 1));
        assert_eq!(broker.history_budget.used(), 0);
        assert_eq!(broker.frame_bytes(), 0);
    }

    #[test]
    fn members_furthest_behind_are_cut_past_the_backlog_budget() {
        let config = Config {
            history: 0,
            send_queue_bytes: 1 << 20,
            backlog_budget_bytes: 50_000,
            ..Config::default()
        };
        let broker = LocalBroker::new(&config, Arc::new(Metrics::default()));
        let stuck = broker.join("a", None, None);
        let mut reader = broker.join("b", None, None);
        for _ in 0..20 {
            publish(&stuck, &"y".repeat(4000));
            publish(&reader, "z");
            reader.feed.try_recv();
        }
        assert!(broker.frame_bytes() <= 50_000, "{}", broker.frame_bytes());
        publish(&reader, "still here");
        assert!(reader.feed.try_recv().is_some(), "the reader is not cut");
    }

    fn visitor(id: &str, name: &str) -> Option<Visitor> {
        Some(Visitor {
            id: id.into(),
            user: Arc::from(format!(r#"{{"id":"{id}","name":"{name}"}}"#)),
        })
    }

    fn notices(feed: &mut Feed) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(delivery) = feed.try_recv() {
            if let Delivery::Notice(frame) = delivery {
                let notice: serde_json::Value = serde_json::from_str(&frame).unwrap();
                seen.push(format!(
                    "{} {}",
                    notice["type"].as_str().unwrap(),
                    notice["count"]
                ));
            }
        }
        seen
    }

    fn lingering(linger_ms: u64) -> Arc<LocalBroker> {
        let config = Config {
            presence_linger: Duration::from_millis(linger_ms),
            ..Config::default()
        };
        LocalBroker::new(&config, Arc::new(Metrics::default()))
    }

    #[test]
    fn joins_and_leaves_are_told_and_a_reconnect_within_the_linger_is_neither() {
        let broker = lingering(5000);
        let mut watcher = broker.join("lobby", None, None);
        let ada = broker.join("lobby", None, visitor("1", "Ada"));
        assert_eq!(ada.members.count, 2);
        assert_eq!(notices(&mut watcher.feed), ["join 2"]);
        drop(ada);
        let back = broker.join("lobby", None, visitor("1", "Ada"));
        broker.tick(Instant::now() + Duration::from_secs(10));
        assert!(notices(&mut watcher.feed).is_empty(), "no leave, no join");
        drop(back);
        broker.tick(Instant::now() + Duration::from_secs(10));
        assert_eq!(notices(&mut watcher.feed), ["leave 1"]);
        assert_eq!(broker.presence("lobby", 10).count, 1);
    }

    #[test]
    fn a_room_waits_for_its_lingering_users_before_it_is_freed() {
        let broker = lingering(5000);
        let ada = broker.join("lobby", None, visitor("1", "Ada"));
        let epoch = ada.epoch.clone();
        drop(ada);
        assert_eq!(broker.room_count(), 1, "kept while Ada lingers");
        let reload = broker.join("lobby", None, visitor("1", "Ada"));
        assert_eq!(reload.epoch, epoch, "a reload keeps the room's history");
        drop(reload);
        broker.tick(Instant::now() + Duration::from_secs(10));
        assert_eq!(broker.room_count(), 0);
        let anonymous = lingering(5000).join("quiet", None, None);
        drop(anonymous);
    }
}
