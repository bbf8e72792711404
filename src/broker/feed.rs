//! A member's feed: what its room sends to its session, bounded in frames and in bytes.
//!
//! The broker holds the [`FeedSender`] and never waits on it. A member whose feed is full in
//! either measure is cut: its queue is emptied at once (freeing the frames, even while the
//! session is stuck writing), the feed closes, and the session tells the client to resume
//! with `since`. So one slow reader costs at most its own bounds, and the broker can take
//! the memory back whenever it needs to.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;

use futures_util::task::AtomicWaker;

use super::Delivery;

/// The room's end of a member's feed.
pub struct FeedSender {
    shared: Arc<Shared>,
}

/// The session's end of its feed.
pub struct Feed {
    shared: Arc<Shared>,
}

/// A handle that does not keep the feed alive: the publisher reports a failed publish to
/// its sender through it, if the sender is still there.
#[derive(Clone)]
pub struct WeakFeed {
    shared: Weak<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the session when something is queued or the feed is cut: one waiter, no lock.
    waker: AtomicWaker,
    max_frames: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Delivery>,
    bytes: usize,
    /// The room let this member go; nothing more will come.
    cut: bool,
    /// The session is gone.
    gone: bool,
}

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// The member is too far behind: cut it.
    Full,
    /// The member is cut or its session has ended.
    Closed,
}

pub fn channel(max_frames: usize, max_bytes: usize) -> (FeedSender, Feed) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        waker: AtomicWaker::new(),
        max_frames,
        max_bytes,
    });
    (
        FeedSender {
            shared: Arc::clone(&shared),
        },
        Feed { shared },
    )
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn offer(&self, delivery: Delivery) -> Result<(), Overflow> {
        let mut state = self.lock();
        if state.cut || state.gone {
            return Err(Overflow::Closed);
        }
        let bytes = delivery.bytes();
        if state.queue.len() >= self.max_frames || state.bytes + bytes > self.max_bytes {
            return Err(Overflow::Full);
        }
        state.bytes += bytes;
        state.queue.push_back(delivery);
        drop(state);
        self.waker.wake();
        Ok(())
    }
}

impl FeedSender {
    /// Queues `delivery` without waiting.
    pub fn offer(&self, delivery: Delivery) -> Result<(), Overflow> {
        self.shared.offer(delivery)
    }

    /// Lets the member go: drops what is queued and closes the feed.
    pub fn cut(&self) {
        let mut state = self.shared.lock();
        state.cut = true;
        state.queue = VecDeque::new();
        state.bytes = 0;
        drop(state);
        self.shared.waker.wake();
    }

    /// Bytes queued and not yet taken by the session.
    pub fn backlog(&self) -> usize {
        self.shared.lock().bytes
    }

    /// The session has ended.
    pub fn is_gone(&self) -> bool {
        self.shared.lock().gone
    }

    pub fn downgrade(&self) -> WeakFeed {
        WeakFeed {
            shared: Arc::downgrade(&self.shared),
        }
    }
}

impl Drop for FeedSender {
    fn drop(&mut self) {
        self.cut();
    }
}

impl WeakFeed {
    /// Queues `delivery` if the session is still there and has room; best effort.
    pub fn offer(&self, delivery: Delivery) {
        if let Some(shared) = self.shared.upgrade() {
            let _ = shared.offer(delivery);
        }
    }
}

impl Feed {
    /// The next delivery; `None` once the room has let this member go.
    pub async fn recv(&mut self) -> Option<Delivery> {
        poll_fn(|cx| {
            if let Some(next) = self.ready() {
                return Poll::Ready(next);
            }
            self.shared.waker.register(cx.waker());
            // Something queued between the look above and the registration is seen here.
            match self.ready() {
                Some(next) => Poll::Ready(next),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// A delivery, or `Some(None)` once cut; `None` while there is nothing yet.
    fn ready(&self) -> Option<Option<Delivery>> {
        let mut state = self.shared.lock();
        match take(&mut state) {
            Some(delivery) => Some(Some(delivery)),
            None if state.cut => Some(None),
            None => None,
        }
    }

    /// A delivery already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        take(&mut self.shared.lock())
    }
}

fn take(state: &mut State) -> Option<Delivery> {
    let delivery = state.queue.pop_front()?;
    state.bytes -= delivery.bytes();
    // A burst leaves a large ring behind; an idle member should not keep it.
    if state.queue.is_empty() && state.queue.capacity() > 16 {
        state.queue = VecDeque::new();
    }
    Some(delivery)
}

impl Feed {
    /// The session is closing: nothing more is queued to it (the room lets it go instead of
    /// counting it as a slow reader), and what was queued is freed.
    pub fn stop(&mut self) {
        let mut state = self.shared.lock();
        state.gone = true;
        state.queue = VecDeque::new();
        state.bytes = 0;
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Frame;

    fn chat(bytes: usize) -> Delivery {
        Delivery::Chat(Frame::from("x".repeat(bytes)))
    }

    #[test]
    fn full_in_frames_or_bytes_whichever_comes_first() {
        let (sender, mut feed) = channel(3, 100);
        assert_eq!(sender.offer(chat(60)), Ok(()));
        assert_eq!(sender.offer(chat(50)), Err(Overflow::Full));
        assert_eq!(sender.offer(chat(40)), Ok(()));
        assert_eq!(sender.backlog(), 100);
        assert!(feed.try_recv().is_some());
        assert_eq!(sender.offer(chat(50)), Ok(()));
        assert_eq!(sender.offer(chat(1)), Ok(()));
        assert_eq!(
            sender.offer(chat(1)),
            Err(Overflow::Full),
            "three frames queued"
        );
        drop(feed);
        assert!(sender.is_gone());
        assert_eq!(sender.offer(chat(1)), Err(Overflow::Closed));
    }

    #[tokio::test]
    async fn a_cut_frees_the_queue_and_ends_the_feed() {
        let (sender, mut feed) = channel(8, 1000);
        sender.offer(chat(10)).unwrap();
        sender.cut();
        assert_eq!(sender.backlog(), 0);
        assert!(feed.recv().await.is_none());
        assert_eq!(sender.offer(chat(1)), Err(Overflow::Closed));
    }

    #[tokio::test]
    async fn the_session_wakes_for_each_delivery() {
        let (sender, mut feed) = channel(8, 1000);
        let reader = tokio::spawn(async move {
            let mut seen = 0;
            while feed.recv().await.is_some() {
                seen += 1;
            }
            seen
        });
        for _ in 0..5 {
            sender.offer(chat(1)).unwrap();
            tokio::task::yield_now().await;
        }
        drop(sender);
        assert_eq!(reader.await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_weak_handle_neither_keeps_the_feed_open_nor_fails() {
        let (sender, mut feed) = channel(2, 100);
        let weak = sender.downgrade();
        weak.offer(chat(1));
        assert!(feed.recv().await.is_some());
        drop(sender);
        assert!(feed.recv().await.is_none());
        weak.offer(chat(1));
    }
}
