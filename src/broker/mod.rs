//! The broker: rooms, their sequence numbers and history, and fan-out to members.
//!
//! A session joins a room and gets a [`Membership`]: a bounded feed of encoded chat frames,
//! the room's epoch and latest seq, and what to replay. Dropping the membership leaves the room.

pub mod local;
pub mod redis;

use std::fmt;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::protocol::{ChatParts, ResetReason};

/// An encoded frame, shared by every member it is delivered to.
pub type Frame = Utf8Bytes;

/// One item of a member's feed.
#[derive(Debug, Clone)]
pub enum Delivery {
    Chat(Frame),
    /// A `reset` notice: the room's history was lost or skipped while the member was in it.
    /// Only extended clients see it; plain ones would read it as a chat message.
    Reset(Frame),
}

/// Where a reconnecting client left off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub since: u64,
    /// The epoch the client saw; `None` trusts that the room's history is the same one.
    pub epoch: Option<String>,
}

/// What a member receives before its live feed.
#[derive(Debug, Default)]
pub enum Replay {
    /// Not resuming: only messages published from now on.
    #[default]
    Nothing,
    /// Every message after `since`, in order.
    Messages(Vec<Frame>),
    /// `since` cannot be honoured; the frames are the history that is still there.
    Reset(ResetReason, Vec<Frame>),
}

pub struct Membership {
    /// The broker holds the sender; it closes when this member falls too far behind.
    pub feed: mpsc::Receiver<Delivery>,
    pub epoch: String,
    /// The room's latest seq when this member joined.
    pub seq: u64,
    pub replay: Replay,
    handle: MemberHandle,
}

enum MemberHandle {
    Local(local::Member),
    Redis(redis::Member),
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

impl Membership {
    fn new(
        feed: mpsc::Receiver<Delivery>,
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
            handle,
        }
    }

    /// Publishes `message` to every member of the room, this one included.
    pub async fn publish(&self, chat: ChatParts) -> Result<(), Unavailable> {
        match &self.handle {
            MemberHandle::Local(member) => {
                member.publish(&chat);
                Ok(())
            }
            MemberHandle::Redis(member) => member.publish(chat).await,
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
        match &config.redis {
            None => {
                health.set_broker_up(true);
                Broker::Local(local::LocalBroker::new(
                    config.history,
                    config.send_queue,
                    metrics,
                ))
            }
            Some(client) => Broker::Redis(redis::RedisBroker::start(
                client.clone(),
                config,
                health,
                metrics,
            )),
        }
    }

    pub async fn join(
        &self,
        room: &str,
        resume: Option<Resume>,
    ) -> Result<Membership, Unavailable> {
        match self {
            Broker::Local(broker) => Ok(broker.join(room, resume)),
            Broker::Redis(broker) => broker.join(room, resume).await,
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
            Broker::Redis(_) => "redis",
        }
    }
}

/// The replay for a member resuming at `resume`, from a history that holds
/// `history` (oldest first, seqs consecutive and ending at `latest`).
pub fn plan_replay<'a>(
    resume: Option<&Resume>,
    epoch: &str,
    latest: u64,
    history: impl DoubleEndedIterator<Item = (u64, &'a Frame)> + ExactSizeIterator,
) -> Replay {
    let Some(resume) = resume else {
        return Replay::Nothing;
    };
    let oldest_kept = latest + 1 - history.len() as u64;
    let reset =
        if resume.epoch.as_deref().is_some_and(|seen| seen != epoch) || resume.since > latest {
            Some(ResetReason::Epoch)
        } else if resume.since + 1 < oldest_kept {
            Some(ResetReason::History)
        } else {
            None
        };
    match reset {
        Some(reason) => Replay::Reset(reason, history.map(|(_, frame)| frame.clone()).collect()),
        None => Replay::Messages(
            history
                .filter(|(seq, _)| *seq > resume.since)
                .map(|(_, frame)| frame.clone())
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(seqs: std::ops::RangeInclusive<u64>) -> Vec<(u64, Frame)> {
        seqs.map(|seq| (seq, Frame::from(seq.to_string())))
            .collect()
    }

    fn plan(resume: Option<Resume>, latest: u64, kept: &[(u64, Frame)]) -> Replay {
        plan_replay(
            resume.as_ref(),
            "e1",
            latest,
            kept.iter().map(|(seq, frame)| (*seq, frame)),
        )
    }

    fn resume(since: u64, epoch: Option<&str>) -> Option<Resume> {
        Some(Resume {
            since,
            epoch: epoch.map(String::from),
        })
    }

    fn texts(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(|f| f.as_str()).collect()
    }

    #[test]
    fn replays_everything_after_since() {
        let kept = history(3..=6);
        match plan(resume(4, Some("e1")), 6, &kept) {
            Replay::Messages(frames) => assert_eq!(texts(&frames), ["5", "6"]),
            other => panic!("{other:?}"),
        }
        match plan(resume(2, None), 6, &kept) {
            Replay::Messages(frames) => assert_eq!(texts(&frames), ["3", "4", "5", "6"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(plan(resume(6, None), 6, &kept), Replay::Messages(f) if f.is_empty()));
        assert!(matches!(plan(None, 6, &kept), Replay::Nothing));
    }

    #[test]
    fn resets_when_history_or_epoch_do_not_reach() {
        let kept = history(3..=6);
        assert!(
            matches!(plan(resume(1, None), 6, &kept), Replay::Reset(ResetReason::History, f) if f.len() == 4)
        );
        assert!(matches!(
            plan(resume(4, Some("e0")), 6, &kept),
            Replay::Reset(ResetReason::Epoch, _)
        ));
        assert!(matches!(
            plan(resume(9, None), 6, &kept),
            Replay::Reset(ResetReason::Epoch, _)
        ));
        assert!(matches!(plan(resume(0, None), 0, &[]), Replay::Messages(f) if f.is_empty()));
    }
}
