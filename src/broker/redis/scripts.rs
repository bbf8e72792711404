//! The Lua scripts that make a room's seq, history and publish one atomic step, and the
//! calls that run them. Each script's `KEYS` are a room's keys in [`RoomKeys`] order.
//!
//! Every script starts with a `#!lua` line: Redis 7 then refuses a writing script as a whole
//! when it is out of memory, instead of failing it half way, and runs the read-only ones
//! (`flags=no-writes`) even then.

use redis::aio::MultiplexedConnection;
use redis::{Pipeline, RedisResult, Value};

use super::Inner;
use super::queue::{Held, Origin};
use super::wire::{self, RoomKeys};
use crate::broker::{Accepted, Frame};

/// The error a publish gets when the one sent before it from the same room and instance has
/// not been applied: it is retried after that one.
pub(super) const GAP_ERROR: &str = "ROOMCAST_GAP";

/// Assigns the next seq, appends to the bounded stream and publishes, all or nothing.
/// Returns `{seq, epoch}`, or `{0, ""}` for a publish applied before (a retry).
/// KEYS: seq, epoch, log, publishers (instance → `<last number> <its epoch>`), bytes, the
/// idempotency key of an API publish, and the room's origin (the replication id its last
/// write was made under; cluster only).
/// ARGV: the frame's prefix and suffix (around the seq), a fresh epoch, history entries,
/// history bytes, ttl seconds, channel, instance id, this publish's number, the previous
/// number from this room (0: none pending), 1 when KEYS[6] is in use, and the command that
/// publishes (`PUBLISH`, or `SPUBLISH` on a cluster).
pub(super) const PUBLISH: &str = r#"#!lua
if ARGV[11] == '1' then
  local done = redis.call('GET', KEYS[6])
  if done then
    local seq, epoch = string.match(done, '^(%d+) (.*)$')
    return {tonumber(seq), epoch}
  end
end
-- Keys made here start without a TTL: set them all below.
local fresh_keys = false
local sharded = ARGV[12] == 'SPUBLISH'
-- Set when this master may lack the room's last writes, and with them publish numbers.
local lost_writes = false
if sharded then
  -- Replication is asynchronous: a replica that took over (or a master that restarted) may
  -- lack the room's last writes and count again from a seq already sent. Either way the
  -- replication id changed: the room starts a new epoch, unless it has no message to lose.
  local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
  local stamped = redis.call('GET', KEYS[7])
  if stamped ~= replid then
    if stamped or tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then
      redis.call('DEL', KEYS[2])
      lost_writes = true
    end
    redis.call('SET', KEYS[7], replid, 'EX', ARGV[6])
    fresh_keys = true
  end
end
-- This instance's last publish number here, and the epoch it was applied in.
local recorded = redis.call('HGET', KEYS[4], ARGV[8]) or '0'
local last = tonumber(string.match(recorded, '^%d+'))
local last_epoch = string.match(recorded, ' (.*)$')
local number = tonumber(ARGV[9])
if number <= last then return {0, ''} end
local epoch = redis.call('GET', KEYS[2])
-- The previous publish is waited for only in the epoch this instance last wrote in: after
-- lost writes (a failover) it may be among them, and waiting would be for ever.
if not lost_writes and last > 0 and last_epoch == epoch and tonumber(ARGV[10]) > last then
  return redis.error_reply('ROOMCAST_GAP an earlier publish from this room is not applied yet')
end
-- A room without an epoch is new; one that lost its seq (evicted apart) must not count
-- from 1 again in the same epoch: both start a new one.
if not epoch or redis.call('EXISTS', KEYS[1]) == 0 then
  epoch = ARGV[3]
  redis.call('SET', KEYS[2], epoch)
  redis.call('DEL', KEYS[1], KEYS[3], KEYS[5])
  fresh_keys = true
end
local seq = redis.call('INCR', KEYS[1])
local frame = ARGV[1] .. seq .. ARGV[2]
local max_entries = tonumber(ARGV[4])
if max_entries > 0 then
  local added = redis.pcall('XADD', KEYS[3], seq .. '-0', 'f', frame)
  if type(added) == 'table' and added.err then
    -- The stream outlived the seq key (evicted apart): a new epoch, never a reused seq.
    epoch = ARGV[3]
    seq = 1
    frame = ARGV[1] .. seq .. ARGV[2]
    redis.call('SET', KEYS[2], epoch)
    redis.call('SET', KEYS[1], seq)
    redis.call('DEL', KEYS[3], KEYS[5])
    redis.call('XADD', KEYS[3], '1-0', 'f', frame)
    fresh_keys = true
  end
  local bytes = redis.call('INCRBY', KEYS[5], #frame)
  if bytes == #frame then fresh_keys = true end
  local length = redis.call('XLEN', KEYS[3])
  while length > 1 and (length > max_entries or bytes > tonumber(ARGV[5])) do
    local oldest = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)[1]
    redis.call('XDEL', KEYS[3], oldest[1])
    bytes = redis.call('DECRBY', KEYS[5], #oldest[2][2])
    length = length - 1
  end
  if length == 1 then redis.call('SET', KEYS[5], #frame, 'KEEPTTL') end
end
redis.call('HSET', KEYS[4], ARGV[8], ARGV[9] .. ' ' .. epoch)
-- One field per instance that ever published here: forget the oldest past a few dozen.
if redis.call('HLEN', KEYS[4]) > 32 then
  local oldest
  for _, field in ipairs(redis.call('HKEYS', KEYS[4])) do
    if field ~= ARGV[8] and (not oldest or field < oldest) then oldest = field end
  end
  redis.call('HDEL', KEYS[4], oldest)
end
-- Refresh the idle expiry once half of it has passed, not on every publish.
if fresh_keys or redis.call('TTL', KEYS[4]) < tonumber(ARGV[6]) / 2 then
  for i = 1, 5 do redis.call('EXPIRE', KEYS[i], ARGV[6]) end
  if sharded then redis.call('EXPIRE', KEYS[7], ARGV[6]) end
end
if ARGV[11] == '1' then redis.call('SET', KEYS[6], seq .. ' ' .. epoch, 'EX', ARGV[6]) end
redis.call(ARGV[12], ARGV[7], seq .. ' ' .. epoch .. ' ' .. frame)
return {seq, epoch}
"#;

/// A room's epoch (nil if it has none), latest seq and oldest kept entry id (nil if none).
/// KEYS: seq, epoch, log.
const STATE: &str = r#"#!lua flags=no-writes
local epoch = redis.call('GET', KEYS[2])
if not epoch then return nil end
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local oldest = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)[1]
if oldest then return {epoch, seq, oldest[1]} end
return {epoch, seq}
"#;

/// Gives a room without an epoch a fresh one at seq 0, and clears what an older life left.
/// KEYS: seq, epoch, log, bytes. ARGV: fresh epoch, ttl seconds.
const CREATE: &str = r#"#!lua
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('DEL', KEYS[3], KEYS[4])
  redis.call('SET', KEYS[1], 0, 'EX', ARGV[2])
end
return 1
"#;

/// Entries after ARGV[2] up to ARGV[3], at most ARGV[4] of them and stopping once past
/// ARGV[5] bytes, if the room is still in epoch ARGV[1] (nil otherwise). KEYS: epoch, log.
const PAGE: &str = r#"#!lua flags=no-writes
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return nil end
local entries = redis.call('XRANGE', KEYS[2], ARGV[2], ARGV[3], 'COUNT', ARGV[4])
local kept, bytes = {}, 0
for _, entry in ipairs(entries) do
  if bytes >= tonumber(ARGV[5]) then break end
  bytes = bytes + #entry[2][2]
  kept[#kept + 1] = entry
end
return kept
"#;

/// XRANGE entries: the id (`<seq>-0`) and the fields, of which the frame is the one.
type Entries = Vec<(String, Vec<(String, String)>)>;

/// Adds one publish to a pipeline.
pub(super) fn add_publish(pipeline: &mut Pipeline, inner: &Inner, held: &Held) {
    let keys = RoomKeys::of(&held.room);
    let idempotency = match &held.origin {
        Origin::Api { idempotency, .. } => Some(idempotency.as_str()),
        Origin::Member(_) => None,
    };
    pipeline
        .cmd("EVALSHA")
        .arg(&inner.publish_hash)
        .arg(7)
        .arg(&keys.seq)
        .arg(&keys.epoch)
        .arg(&keys.log)
        .arg(&keys.publishers)
        .arg(&keys.log_bytes)
        .arg(keys.idempotency(idempotency.unwrap_or("")))
        .arg(&keys.origin)
        .arg(&held.chat.prefix)
        .arg(&held.chat.suffix)
        .arg(inner.fresh_epoch())
        .arg(inner.history)
        .arg(inner.history_bytes)
        .arg(inner.room_ttl_secs)
        .arg(wire::channel(&held.room))
        .arg(&inner.instance)
        .arg(held.number)
        .arg(held.previous)
        .arg(if idempotency.is_some() { "1" } else { "0" })
        .arg(inner.publish_command());
}

/// The seq and epoch a publish reply carries; `None` for a retry Redis had applied before
/// (the epoch then comes back empty).
pub(super) fn accepted(reply: &RedisResult<Value>) -> Option<Accepted> {
    let (seq, epoch): (u64, String) = redis::from_redis_value(reply.as_ref().ok()?.clone()).ok()?;
    (seq > 0).then_some(Accepted { seq, epoch })
}

/// A room as a joining member or a catching-up room task sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RoomState {
    pub epoch: String,
    pub seq: u64,
    pub oldest: Option<u64>,
}

/// The room's state, creating its epoch if it has none. Under memory pressure this still
/// works for a room that exists: only a new room needs a write.
pub(super) async fn room_state(
    connection: &mut MultiplexedConnection,
    inner: &Inner,
    room: &str,
) -> RedisResult<RoomState> {
    let keys = RoomKeys::of(room);
    for _ in 0..2 {
        let reply: Value = redis::Script::new(STATE)
            .key(&keys.seq)
            .key(&keys.epoch)
            .key(&keys.log)
            .invoke_async(connection)
            .await?;
        if let Some(state) = parse_state(reply) {
            return Ok(state);
        }
        redis::Script::new(CREATE)
            .key(&keys.seq)
            .key(&keys.epoch)
            .key(&keys.log)
            .key(&keys.log_bytes)
            .arg(inner.fresh_epoch())
            .arg(inner.room_ttl_secs)
            .invoke_async::<Value>(connection)
            .await?;
    }
    Err(std::io::Error::other("room state vanished while being created").into())
}

fn parse_state(reply: Value) -> Option<RoomState> {
    let Value::Array(fields) = reply else {
        return None;
    };
    let mut fields = fields.into_iter();
    let epoch: String = redis::from_redis_value(fields.next()?).ok()?;
    let seq: u64 = redis::from_redis_value(fields.next()?).ok()?;
    let oldest = fields
        .next()
        .and_then(|id| redis::from_redis_value::<String>(id).ok())
        .and_then(|id| wire::entry_seq(&id));
    Some(RoomState { epoch, seq, oldest })
}

/// A page of a room's stream after seq `after` up to `until`, or `None` if the room is no
/// longer in `epoch`. Frames are counted in the instance's ledger.
pub(super) async fn page(
    connection: &mut MultiplexedConnection,
    inner: &Inner,
    room: &str,
    epoch: &str,
    after: u64,
    until: u64,
    (max_frames, max_bytes): (usize, usize),
) -> RedisResult<Option<Vec<(u64, Frame)>>> {
    let keys = RoomKeys::of(room);
    let reply: Option<Entries> = redis::Script::new(PAGE)
        .key(&keys.epoch)
        .key(&keys.log)
        .arg(epoch)
        .arg(format!("{}-0", after + 1))
        .arg(format!("{until}-0"))
        .arg(max_frames)
        .arg(max_bytes)
        .invoke_async(connection)
        .await?;
    Ok(reply.map(|entries| {
        entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let seq = wire::entry_seq(&id)?;
                let (_, frame) = fields.into_iter().next()?;
                Some((seq, inner.pages.frame(frame)))
            })
            .collect()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_states_parse_with_and_without_history() {
        let with = Value::Array(vec![
            Value::BulkString(b"e1".to_vec()),
            Value::Int(9),
            Value::BulkString(b"4-0".to_vec()),
        ]);
        assert_eq!(
            parse_state(with),
            Some(RoomState {
                epoch: "e1".into(),
                seq: 9,
                oldest: Some(4)
            })
        );
        let without = Value::Array(vec![Value::BulkString(b"e1".to_vec()), Value::Int(0)]);
        assert_eq!(parse_state(without).unwrap().oldest, None);
        assert_eq!(parse_state(Value::Nil), None);
    }

    #[test]
    fn publish_replies_carry_the_seq_and_epoch() {
        let reply = Ok(Value::Array(vec![
            Value::Int(7),
            Value::BulkString(b"e1".to_vec()),
        ]));
        assert_eq!(
            accepted(&reply),
            Some(Accepted {
                seq: 7,
                epoch: "e1".into()
            })
        );
        let retry = Ok(Value::Array(vec![
            Value::Int(0),
            Value::BulkString(Vec::new()),
        ]));
        assert_eq!(accepted(&retry), None);
    }

    #[test]
    fn every_script_declares_how_redis_may_run_it() {
        for script in [PUBLISH, STATE, CREATE, PAGE] {
            assert!(script.starts_with("#!lua"), "{script}");
        }
    }
}
