//! The Lua scripts that make a room's seq, history and publish one atomic step.

use redis::RedisError;
use redis::aio::MultiplexedConnection;

use super::Inner;
use super::wire::{self, RoomKeys};
use crate::broker::Frame;

/// Assigns the next seq, appends to the capped stream and publishes, all or nothing.
/// A publish retried after a lost reply is recognised by its instance counter and skipped.
/// KEYS: seq, epoch, log, publishers. ARGV: the frame's prefix and suffix (around the seq),
/// fresh epoch, history length, ttl seconds, channel, instance id, instance counter.
pub(super) const PUBLISH_SCRIPT: &str = r#"
local last = tonumber(redis.call('HGET', KEYS[4], ARGV[7]) or '0')
if tonumber(ARGV[8]) <= last then return 0 end
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[2], epoch)
  redis.call('DEL', KEYS[1], KEYS[3])
end
local seq = redis.call('INCR', KEYS[1])
local frame = ARGV[1] .. seq .. ARGV[2]
if tonumber(ARGV[4]) > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[4], seq .. '-0', 'f', frame)
end
redis.call('HSET', KEYS[4], ARGV[7], ARGV[8])
-- Refresh the idle expiry once half of it has passed, not on every publish.
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[5]) / 2 then
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
end
redis.call('PUBLISH', ARGV[6], seq .. ' ' .. epoch .. ' ' .. frame)
return seq
"#;

/// The room's epoch (created if the room has none), latest seq, and the stream entries a
/// reader at `since` needs: from `since + 1`, or all of them if `since` is from another epoch.
/// KEYS: seq, epoch, log. ARGV: fresh epoch, ttl seconds, since (-1: none), the reader's epoch.
const SNAPSHOT_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch, 'EX', ARGV[2])
  redis.call('DEL', KEYS[1], KEYS[3])
end
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local since = tonumber(ARGV[3])
local entries = {}
if since >= 0 and since < seq then
  local from = string.format('%d', since + 1)
  if ARGV[4] ~= '' and ARGV[4] ~= epoch then from = '-' end
  entries = redis.call('XRANGE', KEYS[3], from, '+')
elseif since > seq or (ARGV[4] ~= '' and ARGV[4] ~= epoch) then
  entries = redis.call('XRANGE', KEYS[3], '-', '+')
end
return {epoch, seq, entries}
"#;

/// One XRANGE entry: its id (`<seq>-0`) and its one field, the frame.
type StreamEntry = (String, Vec<(String, String)>);

/// A room's state in Redis as one reader at `since` needs it.
pub(super) struct Snapshot {
    pub(super) epoch: String,
    pub(super) seq: u64,
    pub(super) entries: Vec<(u64, Frame)>,
}

pub(super) async fn snapshot(
    connection: &mut MultiplexedConnection,
    inner: &Inner,
    room: &str,
    since: Option<u64>,
    reader_epoch: Option<&str>,
) -> Result<Snapshot, RedisError> {
    let keys = RoomKeys::of(room);
    let reply: (String, u64, Vec<StreamEntry>) = redis::Script::new(SNAPSHOT_SCRIPT)
        .key(keys.seq)
        .key(keys.epoch)
        .key(keys.log)
        .arg(inner.fresh_epoch())
        .arg(inner.room_ttl_secs)
        .arg(since.map_or(-1, |s| s as i64))
        .arg(reader_epoch.unwrap_or(""))
        .invoke_async(connection)
        .await?;
    let (epoch, seq, raw_entries) = reply;
    let mut entries = Vec::with_capacity(raw_entries.len());
    for (id, fields) in raw_entries {
        let entry_seq = wire::entry_seq(&id);
        if let (Some(entry_seq), Some((_, frame))) = (entry_seq, fields.into_iter().next()) {
            entries.push((entry_seq, Frame::from(frame)));
        }
    }
    Ok(Snapshot {
        epoch,
        seq,
        entries,
    })
}
