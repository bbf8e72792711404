//! The Redis wire format: a room's key and channel names, and the pub/sub payload.
//!
//! Every name carries the room in a `{hash tag}`, so all of a room's keys and its channel
//! live in one cluster slot. The publish script (`scripts.rs`) writes the payload that
//! [`Published::parse`] reads: `<seq> <epoch> <frame>`, one space each, the frame last since
//! it may hold spaces. Stream entries have the id `<seq>-0` and one field, the frame.

/// The keys of one room, in the order the scripts take them as `KEYS`.
pub struct RoomKeys {
    /// The room's latest seq (a string, `INCR`ed).
    pub seq: String,
    /// The room's epoch: one life of its history.
    pub epoch: String,
    /// The capped stream of encoded frames, one entry per seq.
    pub log: String,
    /// A hash of instance id → the last publish number applied and the epoch it was applied
    /// in, for exactly-once retries in order.
    pub publishers: String,
    /// Bytes of frames the stream holds, for the per-room byte bound.
    pub log_bytes: String,
    /// On a cluster: the replication id of the master that made the room's last write.
    pub origin: String,
    /// Presence: connection → when it expires (a sorted set)...
    pub present: String,
    /// ...connection → its user's id ('' for anonymous)...
    pub present_who: String,
    /// ...user id → how many connections it has ('' counts anonymous ones)...
    pub present_counts: String,
    /// ...and user id → the user as frames show it.
    pub present_users: String,
}

const PREFIX: &str = "roomcast:room:{";

impl RoomKeys {
    /// Where an API publish with idempotency key `key` records its seq.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}:idempotency:{key}", self.seq.trim_end_matches(":seq"))
    }

    pub fn of(room: &str) -> RoomKeys {
        let base = channel(room);
        RoomKeys {
            seq: format!("{base}:seq"),
            epoch: format!("{base}:epoch"),
            log: format!("{base}:log"),
            publishers: format!("{base}:publishers"),
            log_bytes: format!("{base}:bytes"),
            origin: format!("{base}:origin"),
            present: format!("{base}:present"),
            present_who: format!("{base}:present:who"),
            present_counts: format!("{base}:present:counts"),
            present_users: format!("{base}:present:users"),
        }
    }
}

/// The pub/sub channel of a room; its keys start with the same text.
pub fn channel(room: &str) -> String {
    format!("{PREFIX}{room}}}")
}

/// The room a channel belongs to.
pub fn room_of(channel: &str) -> Option<&str> {
    channel.strip_prefix(PREFIX)?.strip_suffix('}')
}

/// The seq of a stream entry id, `<seq>-0`.
pub fn entry_seq(id: &str) -> Option<u64> {
    id.strip_suffix("-0")?.parse().ok()
}

/// What arrives on a room's channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Chat(Published<'a>),
    /// `P join|leave <count> <connection> <user json>`, from the presence scripts.
    Presence {
        kind: &'a str,
        count: u64,
        /// The connection that joined, or whose expiry made the user leave.
        connection: &'a str,
        user: &'a str,
    },
}

impl<'a> Payload<'a> {
    pub fn parse(payload: &'a str) -> Option<Payload<'a>> {
        let Some(event) = payload.strip_prefix("P ") else {
            return Published::parse(payload).map(Payload::Chat);
        };
        let (kind, rest) = event.split_once(' ')?;
        let (count, rest) = rest.split_once(' ')?;
        let (connection, user) = rest.split_once(' ')?;
        matches!(kind, "join" | "leave").then_some(())?;
        Some(Payload::Presence {
            kind,
            count: count.parse().ok()?,
            connection,
            user,
        })
    }
}

/// One published chat message as it arrives on a room's channel.
#[derive(Debug, PartialEq, Eq)]
pub struct Published<'a> {
    pub seq: u64,
    pub epoch: &'a str,
    pub frame: &'a str,
}

impl<'a> Published<'a> {
    pub fn parse(payload: &'a str) -> Option<Published<'a>> {
        let (seq, rest) = payload.split_once(' ')?;
        let (epoch, frame) = rest.split_once(' ')?;
        Some(Published {
            seq: seq.parse().ok()?,
            epoch,
            frame,
        })
    }

    /// The payload the publish script sends; the script builds the same string in Lua.
    #[cfg(test)]
    pub fn encode(&self) -> String {
        format!("{} {} {}", self.seq, self.epoch, self.frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_channel_share_the_room_hash_tag() {
        let keys = RoomKeys::of("lobby");
        let channel = channel("lobby");
        assert_eq!(channel, "roomcast:room:{lobby}");
        for key in [
            &keys.seq,
            &keys.epoch,
            &keys.log,
            &keys.publishers,
            &keys.origin,
        ] {
            assert!(key.starts_with(&channel), "{key}");
        }
        assert_eq!(room_of(&channel), Some("lobby"));
        assert_eq!(room_of("other:{lobby}"), None);
    }

    #[test]
    fn payloads_round_trip_with_spaces_in_the_frame() {
        let frame = r#"{"message":"a b  c","seq":12,"ts":1}"#;
        let published = Published {
            seq: 12,
            epoch: "18c.0",
            frame,
        };
        let payload = published.encode();
        assert_eq!(Published::parse(&payload), Some(published));
        assert_eq!(Published::parse("x 1 {}"), None);
        assert_eq!(Published::parse("12 only-epoch"), None);
    }

    #[test]
    fn presence_events_share_the_channel() {
        let event = Payload::parse(r#"P join 3 18c.7:4 {"id":"1"}"#);
        assert_eq!(
            event,
            Some(Payload::Presence {
                kind: "join",
                count: 3,
                connection: "18c.7:4",
                user: r#"{"id":"1"}"#
            })
        );
        assert!(matches!(Payload::parse("5 e1 {}"), Some(Payload::Chat(_))));
        assert_eq!(Payload::parse("P wave 3 {}"), None);
    }

    #[test]
    fn entry_ids_carry_the_seq() {
        assert_eq!(entry_seq("42-0"), Some(42));
        assert_eq!(entry_seq("42-1"), None);
        assert_eq!(entry_seq("x-0"), None);
    }
}
