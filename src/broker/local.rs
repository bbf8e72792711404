//! The embedded broker: in-process rooms with per-room seqs and a bounded history.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::{self, error::TrySendError};

use super::{Delivery, Frame, MemberHandle, Membership, Resume, plan_replay};
use crate::metrics::Metrics;
use crate::protocol::ChatParts;

pub struct LocalBroker {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    history_len: usize,
    send_queue: usize,
    metrics: Arc<Metrics>,
    /// Makes epochs unique across restarts, so a resume after one is told to reset.
    epoch_prefix: u64,
    rooms_created: AtomicU64,
}

struct Room {
    name: String,
    epoch: String,
    state: Mutex<RoomState>,
}

struct RoomState {
    seq: u64,
    history: VecDeque<(u64, Frame)>,
    /// Members' feeds; the other end of each is a session's `Membership::feed`.
    members: Vec<(u64, mpsc::Sender<Delivery>)>,
    next_member_id: u64,
}

/// A session's place in a room; leaves the room when dropped.
pub struct Member {
    broker: Arc<LocalBroker>,
    room: Arc<Room>,
    id: u64,
}

impl LocalBroker {
    pub fn new(history_len: usize, send_queue: usize, metrics: Arc<Metrics>) -> Arc<LocalBroker> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Arc::new(LocalBroker {
            rooms: Mutex::new(HashMap::new()),
            history_len,
            send_queue,
            metrics,
            epoch_prefix: now.as_micros() as u64,
            rooms_created: AtomicU64::new(0),
        })
    }

    pub fn join(self: &Arc<Self>, room_name: &str, resume: Option<Resume>) -> Membership {
        let (sender, feed) = mpsc::channel(self.send_queue);
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let room = rooms
            .entry(room_name.to_string())
            .or_insert_with(|| {
                let serial = self.rooms_created.fetch_add(1, Ordering::Relaxed);
                Arc::new(Room {
                    name: room_name.to_string(),
                    epoch: format!("{:x}.{serial:x}", self.epoch_prefix),
                    state: Mutex::new(RoomState {
                        seq: 0,
                        history: VecDeque::new(),
                        members: Vec::new(),
                        next_member_id: 0,
                    }),
                })
            })
            .clone();
        self.metrics.rooms_now(rooms.len());
        let mut state = room.state.lock().unwrap_or_else(|e| e.into_inner());
        drop(rooms);
        let id = state.next_member_id;
        state.next_member_id += 1;
        state.members.push((id, sender));
        let replay = plan_replay(
            resume.as_ref(),
            &room.epoch,
            state.seq,
            state.history.iter().map(|(seq, frame)| (*seq, frame)),
        );
        let seq = state.seq;
        drop(state);
        let epoch = room.epoch.clone();
        let member = Member {
            broker: Arc::clone(self),
            room,
            id,
        };
        Membership::new(feed, epoch, seq, replay, MemberHandle::Local(member))
    }

    fn leave(&self, room: &Arc<Room>, id: u64) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = room.state.lock().unwrap_or_else(|e| e.into_inner());
        state.members.retain(|(member_id, _)| *member_id != id);
        let is_current = rooms
            .get(&room.name)
            .is_some_and(|current| Arc::ptr_eq(current, room));
        if state.members.is_empty() && is_current {
            rooms.remove(&room.name);
            self.metrics.rooms_now(rooms.len());
        }
    }

    #[cfg(test)]
    fn room_count(&self) -> usize {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Member {
    /// Assigns the next seq, encodes the frame once and queues it to every member.
    pub fn publish(&self, chat: &ChatParts) {
        let mut state = self.room.state.lock().unwrap_or_else(|e| e.into_inner());
        state.seq += 1;
        let frame = Frame::from(chat.with_seq(state.seq));
        if self.broker.history_len > 0 {
            if state.history.len() == self.broker.history_len {
                state.history.pop_front();
            }
            let seq = state.seq;
            state.history.push_back((seq, frame.clone()));
        }
        let mut delivered = 0;
        let mut dropped = 0;
        // A member whose queue is full is removed: its feed closes and its session tells it
        // to resume with `since`, so one slow reader never slows the room.
        state.members.retain(
            |(_, member)| match member.try_send(Delivery::Chat(frame.clone())) {
                Ok(()) => {
                    delivered += 1;
                    true
                }
                Err(TrySendError::Full(_)) => {
                    dropped += 1;
                    false
                }
                Err(TrySendError::Closed(_)) => false,
            },
        );
        drop(state);
        self.broker.metrics.frames_queued(delivered);
        for _ in 0..dropped {
            self.broker.metrics.slow_reader_dropped();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.broker.leave(&self.room, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Replay;

    fn broker(history: usize, queue: usize) -> Arc<LocalBroker> {
        LocalBroker::new(history, queue, Arc::new(Metrics::default()))
    }

    fn chat_text(delivery: Delivery) -> String {
        match delivery {
            Delivery::Chat(frame) => frame.to_string(),
            Delivery::Reset(_) => panic!("unexpected reset"),
        }
    }

    fn publish(membership: &Membership, message: &str) {
        match &membership.handle {
            MemberHandle::Local(member) => member.publish(&ChatParts::new(message, None, 9)),
            MemberHandle::Redis(_) => unreachable!("a local broker hands out local members"),
        }
    }

    #[test]
    fn members_get_every_message_in_order_with_seqs() {
        let broker = broker(10, 16);
        let mut alice = broker.join("lobby", None);
        let mut bob = broker.join("lobby", None);
        publish(&alice, "one");
        publish(&bob, "two");
        for member in [&mut alice, &mut bob] {
            assert_eq!(
                chat_text(member.feed.try_recv().unwrap()),
                r#"{"message":"one","seq":1,"ts":9}"#
            );
            assert_eq!(
                chat_text(member.feed.try_recv().unwrap()),
                r#"{"message":"two","seq":2,"ts":9}"#
            );
        }
    }

    #[test]
    fn rooms_are_isolated_and_freed_when_empty() {
        let broker = broker(10, 16);
        let lobby = broker.join("lobby", None);
        let mut other = broker.join("other", None);
        publish(&lobby, "hi");
        assert!(other.feed.try_recv().is_err());
        assert_eq!(broker.room_count(), 2);
        let first_epoch = lobby.epoch.clone();
        drop(lobby);
        assert_eq!(broker.room_count(), 1);
        let again = broker.join("lobby", None);
        assert_eq!(again.seq, 0);
        assert_ne!(again.epoch, first_epoch);
    }

    #[test]
    fn resume_replays_from_history() {
        let broker = broker(3, 16);
        let keeper = broker.join("lobby", None);
        for n in 1..=5 {
            publish(&keeper, &n.to_string());
        }
        let resume = |since| {
            Some(Resume {
                since,
                epoch: Some(keeper.epoch.clone()),
            })
        };
        match broker.join("lobby", resume(3)).replay {
            Replay::Messages(frames) => assert_eq!(frames.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(broker.join("lobby", resume(1)).replay, Replay::Reset(_, f) if f.len() == 3)
        );
    }

    #[test]
    fn a_full_queue_closes_only_that_member() {
        let broker = broker(0, 2);
        let mut slow = broker.join("lobby", None);
        let mut fast = broker.join("lobby", None);
        for n in 0..3 {
            publish(&fast, &n.to_string());
            fast.feed.try_recv().unwrap();
        }
        assert!(slow.feed.try_recv().is_ok());
        assert!(slow.feed.try_recv().is_ok());
        assert!(matches!(
            slow.feed.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        publish(&fast, "still here");
        assert!(fast.feed.try_recv().is_ok());
        assert_eq!(broker.metrics.read("roomcast_slow_reader_drops_total"), 1);
    }
}
