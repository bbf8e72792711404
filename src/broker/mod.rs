//! The broker: rooms, their sequence numbers and history, and fan-out to members.
//!
//! A session joins a room and gets a [`Membership`]: a bounded [`Feed`] of encoded chat
//! frames, the room's epoch and latest seq, and a [`Replay`] plan that the session pages
//! through with [`Membership::replay_page`]. Dropping the membership leaves the room.

pub mod feed;
pub mod history;
pub mod ledger;
pub mod local;
pub mod presence;
pub mod recent;
pub mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::protocol::{ChatParts, ResetReason};
pub use feed::Feed;
pub use history::Page;
pub use presence::{Members, Visitor};

/// An encoded frame, shared by every member it is delivered to.
pub type Frame = Utf8Bytes;

/// One item of a member's feed.
#[derive(Debug, Clone)]
pub enum Delivery {
    Chat(Frame),
    /// A frame with a `type`: a `reset` (history lost or skipped while the member was in
    /// the room), a `join`, `leave` or `members`. Only extended clients see these; plain
    /// ones would read them as chat messages.
    Notice(Frame),
    /// A message this member sent could not be published after all (Redis refused it).
    PublishFailed,
}

impl Delivery {
    /// What it costs while queued.
    pub fn bytes(&self) -> usize {
        match self {
            Delivery::Chat(frame) | Delivery::Notice(frame) => frame.len(),
            Delivery::PublishFailed => 0,
        }
    }
}

/// Where a joining client wants to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Every message after `since`, which the client saw in `epoch` (`None` trusts that the
    /// room's history is the same one).
    Since { since: u64, epoch: Option<String> },
    /// The last `count` messages the history still holds, as a page's history on load.
    Recent(u64),
}

/// What a member receives before its live feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replay {
    /// Only messages published from now on.
    #[default]
    Nothing,
    /// The history after seq `after` up to the seq the member joined at, preceded by a
    /// `reset` notice when the client's `since` cannot be honoured.
    From {
        after: u64,
        reset: Option<ResetReason>,
        /// Messages trimmed away during the replay get a `reset` notice too (when resuming).
        notify_gaps: bool,
    },
}

pub struct Membership {
    /// The broker holds the other end; it closes when this member falls too far behind.
    pub feed: Feed,
    pub epoch: String,
    /// The room's latest seq when this member joined; its feed starts after it.
    pub seq: u64,
    pub replay: Replay,
    /// Who was in the room when this member joined, itself included.
    pub members: Members,
    handle: MemberHandle,
}

enum MemberHandle {
    Local(local::Member),
    Redis(redis::Member),
}

/// A message the room took: its seq in the room's epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub seq: u64,
    pub epoch: String,
}

/// The broker is away (and, for a publish, its bounded queue of held publishes is full):
/// nothing was sent to the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("broker unavailable")
    }
}

/// A publish waiting for room in the broker's queue.
pub type PublishFuture = Pin<Box<dyn Future<Output = Result<(), Unavailable>> + Send>>;

/// What became of a publish at once.
pub enum Publishing {
    /// Delivered (embedded) or queued for Redis.
    Accepted,
    /// Redis is away and its hold queue full: the message was not sent.
    Refused,
    /// Redis's queue is full for a moment; this resolves when the message is in or refused.
    Waiting(PublishFuture),
}

impl Publishing {
    /// The outcome, waiting if need be.
    pub async fn outcome(self) -> Result<(), Unavailable> {
        match self {
            Publishing::Accepted => Ok(()),
            Publishing::Refused => Err(Unavailable),
            Publishing::Waiting(publish) => publish.await,
        }
    }
}

/// A replay page on its way.
pub type PageFuture = Pin<Box<dyn Future<Output = Result<Page, Unavailable>> + Send>>;

/// A replay page holds at most this many frames...
pub const PAGE_FRAMES: usize = 64;
/// ...and stops once past this many bytes, so a resumer pins little at a time.
pub const PAGE_BYTES: usize = 256 * 1024;

impl Membership {
    fn new(
        feed: Feed,
        epoch: String,
        seq: u64,
        replay: Replay,
        handle: MemberHandle,
    ) -> Membership {
        Membership {
            feed,
            epoch,
            seq,
            replay,
            members: Members::default(),
            handle,
        }
    }

    pub(crate) fn with_members(self, members: Members) -> Membership {
        Membership { members, ..self }
    }

    /// Publishes a chat message to every member of the room, this one included. The
    /// embedded broker is done at once; Redis's queue may hold the sender back a moment, with
    /// a future that owns what it needs, so the session keeps delivering meanwhile.
    pub fn publish(&self, chat: ChatParts) -> Publishing {
        match &self.handle {
            MemberHandle::Local(member) => {
                member.publish(&chat);
                Publishing::Accepted
            }
            MemberHandle::Redis(member) => member.publish(chat),
        }
    }

    /// The next page of this member's replay: frames after seq `after`, up to the seq it
    /// joined at. An empty page ends the replay. The future owns what it needs, so a
    /// session can keep one in flight across other events instead of starting it again.
    pub fn replay_page(&self, after: u64) -> PageFuture {
        match &self.handle {
            MemberHandle::Local(member) => {
                let page = member.replay_page(after, self.seq);
                Box::pin(std::future::ready(Ok(page)))
            }
            MemberHandle::Redis(member) => member.replay_page(self.epoch.clone(), after, self.seq),
        }
    }
}

pub enum Broker {
    Local(Arc<local::LocalBroker>),
    Redis(redis::RedisBroker),
}

impl Broker {
    /// The broker the configuration names. The embedded one is up at once; a Redis broker
    /// connects (and reconnects) in the background and reports through `health`.
    pub fn start(config: &Config, health: Arc<Health>, metrics: Arc<Metrics>) -> Broker {
        let backend = match (&config.redis, config.redis_cluster.is_empty()) {
            (Some(client), _) => Some(redis::Backend::Single(client.clone())),
            (None, false) => Some(redis::Backend::Cluster(config.redis_cluster.clone())),
            (None, true) => None,
        };
        match backend {
            None => {
                health.set_broker_up(true);
                let broker = local::LocalBroker::new(config, metrics);
                let ticking = Arc::clone(&broker);
                tokio::spawn(async move {
                    let mut every = tokio::time::interval(local::TICK);
                    loop {
                        every.tick().await;
                        ticking.tick(tokio::time::Instant::now());
                    }
                });
                Broker::Local(broker)
            }
            Some(backend) => {
                Broker::Redis(redis::RedisBroker::start(backend, config, health, metrics))
            }
        }
    }

    pub async fn join(
        &self,
        room: &str,
        resume: Option<Resume>,
        visitor: Option<Visitor>,
    ) -> Result<Membership, Unavailable> {
        match self {
            Broker::Local(broker) => Ok(broker.join(room, resume, visitor)),
            Broker::Redis(broker) => broker.join(room, resume, visitor).await,
        }
    }

    /// Publishes without a membership (the publish API) and answers with the seq. An
    /// idempotency key makes a retried request publish once (empty: none).
    pub async fn publish(
        &self,
        room: &str,
        chat: ChatParts,
        idempotency: &str,
    ) -> Result<Accepted, Unavailable> {
        match self {
            Broker::Local(broker) => Ok(broker.publish(room, &chat, idempotency)),
            Broker::Redis(broker) => {
                let key = if idempotency.is_empty() {
                    broker.fresh_key()
                } else {
                    idempotency.to_string()
                };
                broker.publish(room, chat, key).await
            }
        }
    }

    /// Who is in a room: a count and up to `list` users.
    pub async fn presence(&self, room: &str, list: usize) -> Result<Members, Unavailable> {
        match self {
            Broker::Local(broker) => Ok(broker.presence(room, list)),
            Broker::Redis(broker) => broker.presence(room, list).await,
        }
    }

    /// Sends what is still held; the caller bounds how long this may take.
    pub async fn close(&self) {
        if let Broker::Redis(broker) = self {
            broker.close().await;
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Broker::Local(_) => "embedded",
            Broker::Redis(broker) if broker.is_cluster() => "redis-cluster",
            Broker::Redis(_) => "redis",
        }
    }
}

/// The replay for a member joining with `resume` a room at `latest` whose history starts
/// at seq `oldest` (`None` when it holds nothing).
pub fn plan_replay(
    resume: Option<&Resume>,
    epoch: &str,
    latest: u64,
    oldest: Option<u64>,
) -> Replay {
    let after = match resume {
        None => return Replay::Nothing,
        Some(Resume::Recent(count)) => {
            return Replay::From {
                after: latest.saturating_sub(*count),
                reset: None,
                notify_gaps: false,
            };
        }
        Some(Resume::Since { since, epoch: seen }) => {
            if seen.as_deref().is_some_and(|seen| seen != epoch) || *since > latest {
                return Replay::From {
                    after: 0,
                    reset: Some(ResetReason::Epoch),
                    notify_gaps: true,
                };
            }
            *since
        }
    };
    // Messages after `since` that the history no longer holds are lost to this client.
    let first_kept = oldest.unwrap_or(latest + 1);
    let reset = (after + 1 < first_kept && after < latest).then_some(ResetReason::History);
    Replay::From {
        after,
        reset,
        notify_gaps: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn since(since: u64, epoch: Option<&str>) -> Option<Resume> {
        Some(Resume::Since {
            since,
            epoch: epoch.map(String::from),
        })
    }

    fn plan(resume: Option<Resume>, latest: u64, oldest: Option<u64>) -> Replay {
        plan_replay(resume.as_ref(), "e1", latest, oldest)
    }

    fn from(after: u64, reset: Option<ResetReason>) -> Replay {
        Replay::From {
            after,
            reset,
            notify_gaps: true,
        }
    }

    #[test]
    fn replays_everything_after_since() {
        assert_eq!(plan(since(4, Some("e1")), 6, Some(3)), from(4, None));
        assert_eq!(plan(since(2, None), 6, Some(3)), from(2, None));
        assert_eq!(plan(since(6, None), 6, Some(3)), from(6, None));
        assert_eq!(plan(since(0, None), 0, None), from(0, None));
        assert_eq!(plan(None, 6, Some(3)), Replay::Nothing);
    }

    #[test]
    fn resets_when_history_or_epoch_do_not_reach() {
        let history = Some(ResetReason::History);
        let epoch = Some(ResetReason::Epoch);
        assert_eq!(plan(since(1, None), 6, Some(3)), from(1, history));
        assert_eq!(plan(since(4, Some("e0")), 6, Some(3)), from(0, epoch));
        assert_eq!(plan(since(9, None), 6, Some(3)), from(0, epoch));
    }

    #[test]
    fn a_history_that_lost_keys_never_underflows() {
        let history = Some(ResetReason::History);
        // Redis lost the stream but not the seq, or history is off.
        assert_eq!(plan(since(2, None), 6, None), from(2, history));
        assert_eq!(plan(since(6, None), 6, None), from(6, None));
        // The stream outlived the seq key: what is kept reaches past `latest`.
        assert_eq!(plan(since(0, None), 0, Some(5)), from(0, None));
    }

    #[test]
    fn recent_asks_for_the_tail_without_a_reset() {
        let tail = |after| Replay::From {
            after,
            reset: None,
            notify_gaps: false,
        };
        assert_eq!(plan(Some(Resume::Recent(50)), 6, Some(3)), tail(0));
        assert_eq!(plan(Some(Resume::Recent(2)), 6, Some(3)), tail(4));
    }
}
