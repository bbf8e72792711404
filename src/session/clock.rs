//! A WebSocket's sense of time: when to ping a quiet peer, when to give up on a silent one,
//! and when a message that started arriving has taken too long to finish.
//!
//! One timer, always set for the earliest of those; hearing from the peer only moves a
//! timestamp, so the timer is re-armed when it fires, not on every frame.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep, sleep_until};

pub struct PeerClock {
    heartbeat: Duration,
    timeout: Duration,
    /// The last complete frame from the peer (data, ping, pong or close).
    last_heard: Instant,
    /// A ping went out since `last_heard`.
    pinged: bool,
    /// When the client's token runs out.
    expires: Option<Instant>,
    timer: Pin<Box<Sleep>>,
}

/// What the timer says to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing yet; the timer is re-armed.
    Nothing,
    /// Quiet for the heartbeat: ping the peer.
    Ping,
    /// Nothing heard, not even a pong, for the peer timeout.
    Silent,
    /// A message has been arriving for the peer timeout without being complete.
    Unfinished,
    /// The client's token has expired and no fresh one came.
    Expired,
}

impl PeerClock {
    pub fn new(heartbeat: Duration, timeout: Duration) -> PeerClock {
        let now = Instant::now();
        PeerClock {
            heartbeat,
            timeout,
            last_heard: now,
            pinged: false,
            expires: None,
            timer: Box::pin(sleep_until(now + heartbeat)),
        }
    }

    pub fn heard(&mut self) {
        self.last_heard = Instant::now();
        // The timer waits for the timeout after a ping; the next ping is due sooner.
        if std::mem::take(&mut self.pinged) {
            self.timer.as_mut().reset(self.last_heard + self.heartbeat);
        }
    }

    /// Sets when the token runs out; the timer wakes for it.
    pub fn expire_at(&mut self, at: Option<Instant>) {
        self.expires = at;
        if let Some(at) = at
            && at < self.timer.deadline()
        {
            self.timer.as_mut().reset(at);
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Resolves when the timer is due.
    pub async fn due(&mut self) {
        self.timer.as_mut().await;
    }

    /// Decides what is due now and re-arms the timer; `busy_since` is when the message now
    /// half received started arriving.
    pub fn check(&mut self, busy_since: Option<Instant>) -> Due {
        let now = Instant::now();
        let due = if self.expires.is_some_and(|at| now >= at) {
            Due::Expired
        } else if busy_since.is_some_and(|since| now >= since + self.timeout) {
            Due::Unfinished
        } else if now >= self.last_heard + self.timeout {
            Due::Silent
        } else if !self.pinged && now >= self.last_heard + self.heartbeat {
            self.pinged = true;
            Due::Ping
        } else {
            Due::Nothing
        };
        let mut next = self.last_heard + self.timeout;
        if !self.pinged {
            next = next.min(self.last_heard + self.heartbeat);
        }
        if let Some(since) = busy_since {
            next = next.min(since + self.timeout);
        }
        if let Some(at) = self.expires {
            next = next.min(at);
        }
        self.timer
            .as_mut()
            .reset(next.max(now + Duration::from_millis(1)));
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    async fn next_due(clock: &mut PeerClock, busy_since: Option<Instant>) -> (Due, Duration) {
        let started = Instant::now();
        loop {
            clock.due().await;
            let due = clock.check(busy_since);
            if due != Due::Nothing {
                return (due, started.elapsed());
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pings_a_quiet_peer_then_drops_it_at_the_timeout() {
        let mut clock = PeerClock::new(2 * SECOND, 5 * SECOND);
        assert_eq!(next_due(&mut clock, None).await, (Due::Ping, 2 * SECOND));
        assert_eq!(next_due(&mut clock, None).await, (Due::Silent, 3 * SECOND));
    }

    #[tokio::test(start_paused = true)]
    async fn hearing_from_the_peer_puts_both_off() {
        let mut clock = PeerClock::new(2 * SECOND, 5 * SECOND);
        tokio::time::advance(SECOND).await;
        clock.heard();
        assert_eq!(next_due(&mut clock, None).await, (Due::Ping, 2 * SECOND));
        clock.heard();
        let (due, after) = next_due(&mut clock, None).await;
        assert_eq!((due, after), (Due::Ping, 2 * SECOND));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expiry_wakes_the_timer_and_a_later_one_puts_it_off() {
        let mut clock = PeerClock::new(20 * SECOND, 45 * SECOND);
        let start = Instant::now();
        clock.expire_at(Some(start + 3 * SECOND));
        clock.expire_at(Some(start + 5 * SECOND));
        loop {
            clock.due().await;
            // A heard peer: only the expiry can end this.
            clock.heard();
            if clock.check(None) == Due::Expired {
                break;
            }
        }
        assert_eq!(start.elapsed(), 5 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn pongs_do_not_keep_an_unfinished_message_alive() {
        let mut clock = PeerClock::new(2 * SECOND, 5 * SECOND);
        let started = Instant::now();
        loop {
            clock.due().await;
            // The peer answers every ping at once.
            clock.heard();
            if clock.check(Some(started)) == Due::Unfinished {
                break;
            }
        }
        assert_eq!(started.elapsed(), 5 * SECOND);
    }
}
