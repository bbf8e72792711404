//! Rate limits as the generic cell rate algorithm: one timestamp per client, no timer.
//!
//! A limit of `rate` events a second with bursts of `burst` allows an event at time `t` if
//! the client's theoretical arrival time (TAT) is at most `t + tolerance`, where
//! `tolerance = (burst - 1) / rate`; each event moves the TAT one interval on.

use std::time::Duration;

use tokio::time::Instant;

/// A limit, shared by every client it applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    interval: Duration,
    tolerance: Duration,
}

/// One client's place under a limit.
#[derive(Debug, Clone, Copy)]
pub struct RateState {
    tat: Instant,
}

impl RateState {
    /// The further behind of two places: the one that allows less.
    pub fn latest(self, other: RateState) -> RateState {
        RateState {
            tat: self.tat.max(other.tat),
        }
    }

    /// True once it has drained back to a full burst: it can be forgotten.
    pub fn is_rested(&self, now: Instant) -> bool {
        self.tat <= now
    }
}

impl RateLimit {
    /// `rate` events a second, `burst` at once (both at least 1).
    pub fn new(rate: u32, burst: u32) -> RateLimit {
        let interval = Duration::from_secs(1) / rate.max(1);
        RateLimit {
            interval,
            tolerance: interval * (burst.max(1) - 1),
        }
    }

    pub fn start(&self) -> RateState {
        RateState {
            tat: Instant::now(),
        }
    }

    /// Counts one event now, or says how long until one would be allowed.
    pub fn check(&self, state: &mut RateState) -> Result<(), Duration> {
        self.check_at(state, Instant::now())
    }

    pub fn check_at(&self, state: &mut RateState, now: Instant) -> Result<(), Duration> {
        let tat = state.tat.max(now);
        let allowed_from = tat.checked_sub(self.tolerance).unwrap_or(now);
        if allowed_from > now {
            return Err(allowed_from - now);
        }
        state.tat = tat + self.interval;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_burst_then_the_rate() {
        let limit = RateLimit::new(10, 3);
        let start = Instant::now();
        let mut state = RateState { tat: start };
        for _ in 0..3 {
            assert!(limit.check_at(&mut state, start).is_ok());
        }
        let wait = limit.check_at(&mut state, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(limit.check_at(&mut state, start + wait).is_ok());
        assert!(limit.check_at(&mut state, start + wait).is_err());
        let later = start + Duration::from_secs(1);
        assert!(state.is_rested(later));
        for _ in 0..3 {
            assert!(limit.check_at(&mut state, later).is_ok());
        }
    }

    #[test]
    fn a_refused_event_costs_nothing() {
        let limit = RateLimit::new(1, 1);
        let start = Instant::now();
        let mut state = RateState { tat: start };
        assert!(limit.check_at(&mut state, start).is_ok());
        for _ in 0..100 {
            assert!(limit.check_at(&mut state, start).is_err());
        }
        assert!(
            limit
                .check_at(&mut state, start + Duration::from_secs(1))
                .is_ok()
        );
    }
}
