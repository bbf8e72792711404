//! API publishes remembered by idempotency key for an hour, so a retried request gets the
//! first answer instead of a second message. Bounded: the oldest are forgotten first.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::Accepted;

/// How long a key is remembered.
const KEEP: Duration = Duration::from_secs(3600);
/// Keys remembered at most.
const MAX_KEYS: usize = 10_000;

#[derive(Default)]
pub struct RecentPublishes {
    answers: HashMap<(String, String), Accepted>,
    /// Keys in the order they came, with when.
    order: VecDeque<(Instant, (String, String))>,
}

impl RecentPublishes {
    pub fn get(&mut self, room: &str, key: &str) -> Option<Accepted> {
        self.forget_old(Instant::now());
        self.answers
            .get(&(room.to_string(), key.to_string()))
            .cloned()
    }

    pub fn insert(&mut self, room: &str, key: &str, accepted: Accepted) {
        let entry = (room.to_string(), key.to_string());
        if self.answers.insert(entry.clone(), accepted).is_none() {
            self.order.push_back((Instant::now(), entry));
        }
        while self.order.len() > MAX_KEYS {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.answers.remove(&oldest);
            }
        }
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < KEEP {
                break;
            }
            if let Some((_, oldest)) = self.order.pop_front() {
                self.answers.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_answers_and_forgets_the_oldest_past_the_bound() {
        let mut recent = RecentPublishes::default();
        let accepted = |seq| Accepted {
            seq,
            epoch: "e".into(),
        };
        recent.insert("room", "k1", accepted(1));
        assert_eq!(recent.get("room", "k1"), Some(accepted(1)));
        assert_eq!(recent.get("other", "k1"), None);
        for n in 0..MAX_KEYS {
            recent.insert("room", &n.to_string(), accepted(2));
        }
        assert_eq!(recent.get("room", "k1"), None);
        assert_eq!(recent.answers.len(), MAX_KEYS);
    }
}
