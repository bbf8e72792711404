//! Which cluster node owns a room: the key slot of a name, and the slot table that
//! `CLUSTER SLOTS` describes.

use std::sync::Arc;

use redis::Value;

use crate::broker::redis::wire;

/// Redis Cluster's number of hash slots.
pub const SLOTS: usize = 16384;

/// The slot Redis gives `key`: CRC16 (XMODEM) of its `{hash tag}` if it has a non-empty one,
/// else of the whole key.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|b| *b == b'{').and_then(|open| {
        let close = bytes[open + 1..].iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &bytes[open + 1..open + 1 + close])
    });
    slot_of_bytes(tagged.unwrap_or(bytes))
}

/// The slot of every key and of the channel of `room` (`roomcast:room:{<room>}…`), without
/// building one: their hash tag is the room's name. Room names hold no `}`; one that did
/// would end the tag early, as Redis reads it.
pub fn room_slot(room: &str) -> u16 {
    match room.split('}').next() {
        Some(tag) if !tag.is_empty() => slot_of_bytes(tag.as_bytes()),
        _ => key_slot(&wire::channel(room)),
    }
}

fn slot_of_bytes(bytes: &[u8]) -> u16 {
    (crc16(bytes) as usize % SLOTS) as u16
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in bytes {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The master of every slot, as `host:port`; `None` for a slot no node serves.
#[derive(Debug, Clone)]
pub struct SlotMap {
    owners: Vec<Option<Arc<str>>>,
    /// Their replicas, which a later refresh may ask too: one may be a master by then.
    replicas: Vec<Arc<str>>,
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply: `[start, end, [host, port, id, …], replicas…]` per
    /// range. An empty host means the node answering: `asked` is the address it was asked at.
    pub fn parse(reply: Value, asked: &str) -> Option<SlotMap> {
        let Value::Array(ranges) = reply else {
            return None;
        };
        let mut owners = vec![None; SLOTS];
        let mut replicas = Vec::new();
        for range in ranges {
            let Value::Array(fields) = range else {
                return None;
            };
            let mut fields = fields.into_iter();
            let start: usize = redis::from_redis_value(fields.next()?).ok()?;
            let end: usize = redis::from_redis_value(fields.next()?).ok()?;
            let address = node_address(fields.next()?, asked)?;
            for owner in owners.get_mut(start..=end)? {
                *owner = Some(Arc::clone(&address));
            }
            for replica in fields {
                let replica = node_address(replica, asked)?;
                if !replicas.contains(&replica) {
                    replicas.push(replica);
                }
            }
        }
        Some(SlotMap { owners, replicas })
    }

    pub fn owner(&self, slot: u16) -> Option<&Arc<str>> {
        self.owners.get(slot as usize)?.as_ref()
    }

    /// Whether every slot has a master.
    pub fn is_complete(&self) -> bool {
        self.owners.iter().all(Option::is_some)
    }

    pub fn replicas(&self) -> &[Arc<str>] {
        &self.replicas
    }

    /// Every master, once each.
    pub fn masters(&self) -> Vec<Arc<str>> {
        let mut masters: Vec<Arc<str>> = Vec::new();
        for owner in self.owners.iter().flatten() {
            if !masters.contains(owner) {
                masters.push(Arc::clone(owner));
            }
        }
        masters
    }
}

/// `host:port` of a node entry, `[host, port, id, …]`.
fn node_address(entry: Value, asked: &str) -> Option<Arc<str>> {
    let Value::Array(fields) = entry else {
        return None;
    };
    let mut fields = fields.into_iter();
    let host: String = redis::from_redis_value(fields.next()?).ok()?;
    let port: u16 = redis::from_redis_value(fields.next()?).ok()?;
    let host = match host.as_str() {
        "" | "?" => asked.rsplit_once(':')?.0.to_string(),
        _ => host,
    };
    // An IPv6 address in brackets, so that `host:port` parses back.
    if host.contains(':') && !host.starts_with('[') {
        return Some(Arc::from(format!("[{host}]:{port}")));
    }
    Some(Arc::from(format!("{host}:{port}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn slots_follow_the_hash_tag() {
        // Values Redis's CLUSTER KEYSLOT gives.
        assert_eq!(key_slot("123456789"), 12739);
        assert_eq!(key_slot("roomcast:room:{x}"), 16287);
        assert_eq!(key_slot("roomcast:room:{x}:seq"), key_slot("{x}"));
        assert_eq!(key_slot("a{}b"), key_slot("a{}b"));
        assert_ne!(key_slot("a{}b"), key_slot(""));
    }

    #[test]
    fn a_room_slot_is_its_channel_slot() {
        for room in ["lobby", "x", "a.b-c_9", "ab}c", "}x", "room{1}"] {
            let channel = wire::channel(room);
            assert_eq!(room_slot(room), key_slot(&channel), "{room}");
        }
    }

    #[test]
    fn a_slot_table_names_each_master() {
        let range = |start: i64, end: i64, host: &str, port: i64| {
            Value::Array(vec![
                Value::Int(start),
                Value::Int(end),
                Value::Array(vec![bulk(host), Value::Int(port), bulk("id")]),
                Value::Array(vec![bulk("10.0.0.9"), Value::Int(7009), bulk("replica")]),
            ])
        };
        let reply = Value::Array(vec![
            range(0, 8000, "10.0.0.1", 7001),
            range(8001, 16383, "", 7002),
        ]);
        let map = SlotMap::parse(reply, "10.0.0.2:7002").unwrap();
        assert_eq!(map.owner(0).map(|a| &**a), Some("10.0.0.1:7001"));
        assert_eq!(map.owner(16383).map(|a| &**a), Some("10.0.0.2:7002"));
        assert!(map.is_complete());
        assert_eq!(map.masters().len(), 2);
        assert_eq!(map.replicas().len(), 1, "{:?}", map.replicas());
        let ipv6 = SlotMap::parse(Value::Array(vec![range(0, 16383, "::1", 7000)]), "h:1");
        assert_eq!(ipv6.unwrap().owner(5).map(|a| &**a), Some("[::1]:7000"));
        let partial = Value::Array(vec![range(0, 10, "h", 1)]);
        assert!(!SlotMap::parse(partial, "h:1").unwrap().is_complete());
        assert!(SlotMap::parse(Value::Nil, "h:1").is_none());
    }
}
