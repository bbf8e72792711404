//! Who is in a room: users by id (counted once however many connections they hold) and
//! anonymous connections (counted, never listed).
//!
//! A user's last connection closing does not make them leave at once: they linger, so a
//! reload or a blue-green swap (every client reconnects within a second or two) produces no
//! leave and no join at all. Only a linger that runs out is a leave.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// A user as frames show them: `{"id": …, "name": …}`, encoded once.
pub type UserJson = Arc<str>;

/// A user joining a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visitor {
    pub id: String,
    pub user: UserJson,
}

/// A change worth telling the room about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Joined(UserJson),
    Left(UserJson),
}

#[derive(Debug)]
struct Present {
    user: UserJson,
    connections: u32,
    /// Set while the user has no connection: they leave at this instant unless one comes.
    leaves_at: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Presence {
    users: HashMap<String, Present>,
    anonymous: u32,
}

/// A room's presence as a joining member sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// Users (a lingering one included) plus anonymous connections.
    pub count: u64,
    /// Up to the list size, in no particular order.
    pub users: Vec<UserJson>,
}

impl Presence {
    /// A connection arrived: `Joined` if it is the user's first (a lingering user coming
    /// back is not a join).
    pub fn arrive(&mut self, user: Option<(&str, &UserJson)>) -> Option<Change> {
        let Some((id, json)) = user else {
            self.anonymous += 1;
            return None;
        };
        match self.users.get_mut(id) {
            Some(present) => {
                present.connections += 1;
                present.leaves_at = None;
                present.user = Arc::clone(json);
                None
            }
            None => {
                let present = Present {
                    user: Arc::clone(json),
                    connections: 1,
                    leaves_at: None,
                };
                self.users.insert(id.to_string(), present);
                Some(Change::Joined(Arc::clone(json)))
            }
        }
    }

    /// A connection closed; a user whose last one it was lingers until `now + linger`.
    /// With no linger the user leaves at once.
    pub fn depart(
        &mut self,
        user_id: Option<&str>,
        now: Instant,
        linger: std::time::Duration,
    ) -> Option<Change> {
        let Some(id) = user_id else {
            self.anonymous = self.anonymous.saturating_sub(1);
            return None;
        };
        let present = self.users.get_mut(id)?;
        present.connections = present.connections.saturating_sub(1);
        if present.connections > 0 {
            return None;
        }
        if linger.is_zero() {
            return self.users.remove(id).map(|gone| Change::Left(gone.user));
        }
        present.leaves_at = Some(now + linger);
        None
    }

    /// Users whose linger has run out leave.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        let mut left = Vec::new();
        self.users.retain(|_, present| match present.leaves_at {
            Some(at) if at <= now => {
                left.push(Change::Left(Arc::clone(&present.user)));
                false
            }
            _ => true,
        });
        left
    }

    /// Someone is lingering: the room must wait before it is freed.
    pub fn is_lingering(&self) -> bool {
        self.users
            .values()
            .any(|present| present.leaves_at.is_some())
    }

    pub fn count(&self) -> u64 {
        self.users.len() as u64 + u64::from(self.anonymous)
    }

    pub fn members(&self, list: usize) -> Members {
        Members {
            count: self.count(),
            users: self
                .users
                .values()
                .take(list)
                .map(|p| Arc::clone(&p.user))
                .collect(),
        }
    }
}

/// How often a changed count is announced in a room too large for events.
pub const COUNT_EVERY: Duration = Duration::from_secs(10);

/// The count a room's members were last told, and when.
#[derive(Debug, Clone, Copy)]
pub struct Announced {
    count: u64,
    at: Instant,
}

impl Default for Announced {
    fn default() -> Announced {
        Announced {
            count: 0,
            at: Instant::now(),
        }
    }
}

impl Announced {
    /// The members now know `count` (from an event, or a welcome).
    pub fn told(&mut self, count: u64) {
        *self = Announced {
            count,
            at: Instant::now(),
        };
    }

    /// Whether `count` is to be announced now, counted as told if so: a changed count at
    /// once in a room small enough for events (`events_max`), at most every
    /// [`COUNT_EVERY`] in a larger one.
    pub fn due(&mut self, count: u64, events_max: u64, now: Instant) -> bool {
        let every = if count > events_max {
            COUNT_EVERY
        } else {
            Duration::ZERO
        };
        if count == self.count || now < self.at + every {
            return false;
        }
        *self = Announced { count, at: now };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ada() -> UserJson {
        Arc::from(r#"{"id":"1","name":"Ada"}"#)
    }

    const LINGER: Duration = Duration::from_secs(5);

    #[test]
    fn a_user_joins_once_however_many_connections() {
        let mut room = Presence::default();
        let user = ada();
        assert_eq!(room.arrive(Some(("1", &user))), Some(Change::Joined(ada())));
        assert_eq!(room.arrive(Some(("1", &user))), None);
        assert_eq!(room.arrive(None), None);
        assert_eq!(room.count(), 2);
        let now = Instant::now();
        assert_eq!(room.depart(Some("1"), now, LINGER), None);
        assert_eq!(room.depart(Some("1"), now, LINGER), None, "lingers");
        assert_eq!(room.count(), 2, "a lingering user is still here");
        assert!(room.expire(now + LINGER / 2).is_empty());
        assert_eq!(room.expire(now + LINGER), vec![Change::Left(ada())]);
        assert_eq!(room.count(), 1);
    }

    #[test]
    fn coming_back_within_the_linger_is_neither_a_leave_nor_a_join() {
        let mut room = Presence::default();
        let user = ada();
        room.arrive(Some(("1", &user)));
        let now = Instant::now();
        room.depart(Some("1"), now, LINGER);
        assert!(room.is_lingering());
        assert_eq!(room.arrive(Some(("1", &user))), None);
        assert!(room.expire(now + LINGER * 2).is_empty());
        assert!(!room.is_lingering());
    }

    #[test]
    fn without_a_linger_the_last_connection_leaves_at_once() {
        let mut room = Presence::default();
        let user = ada();
        room.arrive(Some(("1", &user)));
        let left = room.depart(Some("1"), Instant::now(), Duration::ZERO);
        assert_eq!(left, Some(Change::Left(ada())));
        assert_eq!(room.members(10), Members::default());
    }
}
