//! Per client address: how many connections it holds and how fast it upgrades.
//!
//! IPv6 clients are counted per /64, the block one subscriber usually gets, so rotating
//! addresses within it does not multiply the allowance. The table holds an entry while its
//! address has connections or upgraded recently, and never more entries than twice the
//! connection cap: past that, new addresses go uncounted rather than refused, and the
//! global cap still holds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::rate::{RateLimit, RateState};
use crate::config::canonical;

/// An address as counted: IPv4 as is, IPv6 by its /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    pub fn of(address: IpAddr) -> AddressKey {
        match canonical(address) {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & (u128::MAX << 64);
                AddressKey(IpAddr::V6(prefix.into()))
            }
            v4 => AddressKey(v4),
        }
    }
}

#[derive(Debug)]
struct Entry {
    connections: usize,
    upgrades: RateState,
    /// Where the address's closed connections left off under the publish rate.
    publishes: Option<RateState>,
}

impl Entry {
    /// Nothing to remember: no connection, and every rate back to a full burst.
    fn is_idle(&self, now: Instant) -> bool {
        self.connections == 0
            && self.upgrades.is_rested(now)
            && self.publishes.is_none_or(|state| state.is_rested(now))
    }
}

pub struct AddressTable {
    entries: Mutex<HashMap<AddressKey, Entry>>,
    max_connections: usize,
    upgrades: RateLimit,
    max_entries: usize,
}

/// Over a per-address limit: answer 429, and the client may retry after this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooMany {
    pub retry_after: Duration,
    pub reason: &'static str,
}

/// One connection counted against its address, until dropped.
pub struct AddressGuard {
    table: Arc<AddressTable>,
    key: Option<AddressKey>,
}

impl AddressTable {
    pub fn new(max_connections: usize, upgrades: RateLimit, connection_cap: usize) -> AddressTable {
        AddressTable {
            entries: Mutex::new(HashMap::new()),
            max_connections,
            upgrades,
            max_entries: connection_cap.saturating_mul(2).max(64),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<AddressKey, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a connection from `address`, or refuses it past the per-address cap.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<AddressGuard, TooMany> {
        let key = AddressKey::of(address);
        let mut entries = self.lock();
        if !entries.contains_key(&key) && !self.make_room(&mut entries) {
            return Ok(AddressGuard {
                table: Arc::clone(self),
                key: None,
            });
        }
        let upgrades = self.upgrades.start();
        let entry = entries.entry(key).or_insert(Entry {
            connections: 0,
            upgrades,
            publishes: None,
        });
        if entry.connections >= self.max_connections {
            return Err(TooMany {
                retry_after: Duration::from_secs(1),
                reason: "too many connections from your address",
            });
        }
        entry.connections += 1;
        Ok(AddressGuard {
            table: Arc::clone(self),
            key: Some(key),
        })
    }

    /// Counts a WebSocket upgrade from `address`, or refuses it past the rate.
    pub fn upgrade(&self, address: IpAddr) -> Result<(), TooMany> {
        let key = AddressKey::of(address);
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(&key) else {
            return Ok(());
        };
        self.upgrades
            .check(&mut entry.upgrades)
            .map_err(|wait| TooMany {
                retry_after: wait.max(Duration::from_secs(1)),
                reason: "too many requests from your address: slow down",
            })
    }

    /// Forgets idle entries once the table is full; false if it is still full.
    fn make_room(&self, entries: &mut HashMap<AddressKey, Entry>) -> bool {
        if entries.len() < self.max_entries {
            return true;
        }
        let now = Instant::now();
        entries.retain(|_, entry| !entry.is_idle(now));
        entries.len() < self.max_entries
    }

    fn release(&self, key: AddressKey) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(&key) {
            entry.connections = entry.connections.saturating_sub(1);
            if entry.is_idle(Instant::now()) {
                entries.remove(&key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AddressGuard {
    /// Where a new connection from this address starts under the publish `limit`: where its
    /// closed connections left off, so reconnecting does not buy a fresh burst.
    pub fn publish_start(&self, limit: &RateLimit) -> RateState {
        let fresh = limit.start();
        let Some(key) = self.key else {
            return fresh;
        };
        let entries = self.table.lock();
        match entries.get(&key).and_then(|entry| entry.publishes) {
            Some(left) => fresh.latest(left),
            None => fresh,
        }
    }

    /// A connection ends at `state` under the publish rate; the address's next starts there.
    pub fn publish_end(&self, state: RateState) {
        let Some(key) = self.key else {
            return;
        };
        if let Some(entry) = self.table.lock().get_mut(&key) {
            entry.publishes = Some(entry.publishes.map_or(state, |left| left.latest(state)));
        }
    }
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.table.release(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(per_address: usize, cap: usize) -> Arc<AddressTable> {
        Arc::new(AddressTable::new(per_address, RateLimit::new(1, 2), cap))
    }

    #[test]
    fn connections_are_capped_per_address() {
        let table = table(2, 100);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = table.admit(a).unwrap();
        let _second = table.admit(a).unwrap();
        assert!(table.admit(a).is_err());
        assert!(table.admit("192.0.2.2".parse().unwrap()).is_ok());
        drop(first);
        assert!(table.admit(a).is_ok());
    }

    #[test]
    fn an_ipv6_block_counts_as_one_address() {
        let table = table(1, 100);
        let _one = table.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(table.admit("2001:db8::ffff:2".parse().unwrap()).is_err());
        assert!(table.admit("2001:db8:0:1::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn a_reconnect_starts_where_the_last_connection_left_off_under_the_publish_rate() {
        let table = table(10, 100);
        let publishes = RateLimit::new(1, 3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = table.admit(a).unwrap();
        let mut state = first.publish_start(&publishes);
        for _ in 0..3 {
            assert!(publishes.check(&mut state).is_ok());
        }
        first.publish_end(state);
        drop(first);
        let again = table.admit(a).unwrap();
        let mut state = again.publish_start(&publishes);
        assert!(publishes.check(&mut state).is_err(), "the burst was spent");
        let elsewhere = table.admit("192.0.2.2".parse().unwrap()).unwrap();
        let mut fresh = elsewhere.publish_start(&publishes);
        assert!(
            publishes.check(&mut fresh).is_ok(),
            "another address has its own"
        );
    }

    #[test]
    fn upgrades_are_rate_limited_per_address() {
        let table = table(10, 100);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let _guard = table.admit(a).unwrap();
        assert!(table.upgrade(a).is_ok());
        assert!(table.upgrade(a).is_ok());
        let refused = table.upgrade(a).unwrap_err();
        assert!(refused.retry_after >= Duration::from_secs(1));
    }

    #[test]
    fn entries_go_when_idle_and_the_table_stays_bounded() {
        let table = table(10, 32);
        let guards: Vec<AddressGuard> = (0..200u32)
            .map(|n| table.admit(IpAddr::from(n.to_be_bytes())).unwrap())
            .collect();
        assert!(table.len() <= 64, "{}", table.len());
        drop(guards);
        assert!(table.is_empty());
    }
}
