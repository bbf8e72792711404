//! Presence across instances, in Redis: one entry per connection, scored by when it expires.
//!
//! An instance refreshes its connections' entries while they are open; one that closes is
//! set to expire after the linger; one whose instance crashed expires when its refresh stops
//! coming. Whichever instance reaps an expired entry (atomically, in a script) announces the
//! leave, if it was the user's last entry. A join is announced by the script that adds a
//! user's first entry. A reconnect within the linger, on any instance, is neither.

use redis::aio::MultiplexedConnection;
use redis::{Pipeline, RedisResult, Value};

use super::Inner;
use super::wire::{self, RoomKeys};
use crate::broker::presence::Members;
use crate::protocol::now_ms;

/// Adds a connection (and its user); announces the user's first. Returns the room's count
/// and up to ARGV[8] users. KEYS: present, who, counts, users. ARGV: connection, expiry
/// (ms), user id ('' for anonymous), user json, events max, channel, ttl secs, list size,
/// the command that publishes.
const ARRIVE: &str = r#"#!lua
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local first = redis.call('HINCRBY', KEYS[3], ARGV[3], 1) == 1
if ARGV[3] ~= '' then redis.call('HSET', KEYS[4], ARGV[3], ARGV[4]) end
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[7]) end
local anonymous = tonumber(redis.call('HGET', KEYS[3], '') or '0')
local count = redis.call('HLEN', KEYS[4]) + anonymous
if ARGV[3] ~= '' and first and count <= tonumber(ARGV[5]) then
  redis.call(ARGV[9], ARGV[6], 'P join ' .. count .. ' ' .. ARGV[1] .. ' ' .. ARGV[4])
end
local listed = {}
local scan = redis.call('HSCAN', KEYS[4], 0, 'COUNT', ARGV[8])[2]
for i = 2, #scan, 2 do
  if #listed >= tonumber(ARGV[8]) then break end
  listed[#listed + 1] = scan[i]
end
return {count, listed}
"#;

/// Removes expired connections; announces a user whose last one it was. Returns the count.
/// KEYS: present, who, counts, users. ARGV: now (ms), events max, channel, the command that
/// publishes.
const REAP: &str = r#"#!lua
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 256)
for _, conn in ipairs(expired) do
  redis.call('ZREM', KEYS[1], conn)
  local user = redis.call('HGET', KEYS[2], conn) or ''
  redis.call('HDEL', KEYS[2], conn)
  if redis.call('HINCRBY', KEYS[3], user, -1) <= 0 then
    redis.call('HDEL', KEYS[3], user)
    local json = redis.call('HGET', KEYS[4], user)
    if user ~= '' and json then
      redis.call('HDEL', KEYS[4], user)
      local count = redis.call('HLEN', KEYS[4]) + tonumber(redis.call('HGET', KEYS[3], '') or '0')
      if count <= tonumber(ARGV[2]) then
        redis.call(ARGV[4], ARGV[3], 'P leave ' .. count .. ' ' .. conn .. ' ' .. json)
      end
    end
  end
end
return redis.call('HLEN', KEYS[4]) + tonumber(redis.call('HGET', KEYS[3], '') or '0')
"#;

/// Who is in a room, read only: the count and up to ARGV[1] users. KEYS: counts, users.
const READ: &str = r#"#!lua flags=no-writes
local anonymous = tonumber(redis.call('HGET', KEYS[1], '') or '0')
local listed = {}
local scan = redis.call('HSCAN', KEYS[2], 0, 'COUNT', ARGV[1])[2]
for i = 2, #scan, 2 do
  if #listed >= tonumber(ARGV[1]) then break end
  listed[#listed + 1] = scan[i]
end
return {redis.call('HLEN', KEYS[2]) + anonymous, listed}
"#;

/// The id of a connection in Redis: unique across instances.
pub(super) fn connection(inner: &Inner, member: u64) -> String {
    format!("{}:{member}", inner.instance)
}

pub(super) async fn arrive(
    commands: &mut MultiplexedConnection,
    inner: &Inner,
    room: &str,
    member: u64,
    user: Option<(&str, &str)>,
) -> RedisResult<Members> {
    let keys = RoomKeys::of(room);
    let (id, json) = user.unwrap_or(("", ""));
    let reply: Value = redis::Script::new(ARRIVE)
        .key(&keys.present)
        .key(&keys.present_who)
        .key(&keys.present_counts)
        .key(&keys.present_users)
        .arg(connection(inner, member))
        .arg(now_ms() + inner.presence_ttl_ms)
        .arg(id)
        .arg(json)
        .arg(inner.presence_events_max)
        .arg(wire::channel(room))
        .arg(inner.room_ttl_secs)
        .arg(inner.presence_list)
        .arg(inner.publish_command())
        .invoke_async(commands)
        .await?;
    Ok(parse_members(reply))
}

/// The connection closed: its entry expires after the linger, unless refreshed meanwhile.
pub(super) fn add_depart(pipeline: &mut Pipeline, inner: &Inner, room: &str, member: u64) {
    let keys = RoomKeys::of(room);
    let expires = now_ms() + inner.presence_linger_ms;
    pipeline
        .cmd("ZADD")
        .arg(&keys.present)
        .arg("XX")
        .arg(expires)
        .arg(connection(inner, member))
        .ignore();
}

/// Keeps this instance's connections in a room present.
pub(super) fn add_refresh(pipeline: &mut Pipeline, inner: &Inner, room: &str, members: &[u64]) {
    if members.is_empty() {
        return;
    }
    let keys = RoomKeys::of(room);
    let expires = now_ms() + inner.presence_ttl_ms;
    let command = pipeline.cmd("ZADD").arg(&keys.present).arg("XX");
    for member in members {
        command.arg(expires).arg(connection(inner, *member));
    }
    command.ignore();
    for key in [
        &keys.present,
        &keys.present_who,
        &keys.present_counts,
        &keys.present_users,
    ] {
        pipeline
            .cmd("EXPIRE")
            .arg(key)
            .arg(inner.room_ttl_secs)
            .ignore();
    }
}

/// Reaps expired entries of a room; the reply is its count.
pub(super) fn add_reap(pipeline: &mut Pipeline, inner: &Inner, room: &str) {
    let keys = RoomKeys::of(room);
    pipeline
        .cmd("EVAL")
        .arg(REAP)
        .arg(4)
        .arg(&keys.present)
        .arg(&keys.present_who)
        .arg(&keys.present_counts)
        .arg(&keys.present_users)
        .arg(now_ms())
        .arg(inner.presence_events_max)
        .arg(wire::channel(room))
        .arg(inner.publish_command());
}

/// Who is in a room, for the presence API.
pub(super) async fn read(
    connection: &mut MultiplexedConnection,
    room: &str,
    list: usize,
) -> RedisResult<Members> {
    let keys = RoomKeys::of(room);
    let reply: Value = redis::Script::new(READ)
        .key(&keys.present_counts)
        .key(&keys.present_users)
        .arg(list)
        .invoke_async(connection)
        .await?;
    Ok(parse_members(reply))
}

fn parse_members(reply: Value) -> Members {
    let Ok((count, users)) = redis::from_redis_value::<(u64, Vec<String>)>(reply) else {
        return Members::default();
    };
    Members {
        count,
        users: users.into_iter().map(std::sync::Arc::from).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_members() {
        let reply = Value::Array(vec![
            Value::Int(3),
            Value::Array(vec![Value::BulkString(br#"{"id":"1"}"#.to_vec())]),
        ]);
        let members = parse_members(reply);
        assert_eq!(members.count, 3);
        assert_eq!(&*members.users[0], r#"{"id":"1"}"#);
        assert_eq!(parse_members(Value::Nil), Members::default());
    }

    #[test]
    fn every_script_declares_how_redis_may_run_it() {
        for script in [ARRIVE, REAP, READ] {
            assert!(script.starts_with("#!lua"));
        }
    }
}
