-- _epoch.lua: the partition's dataset epoch, shared by publish.lua, replay.lua and epoch.lua
-- (prepended to each when the service is built; not a script of its own).
--
-- The epoch hash n:{tag}:epoch holds `ms`, since when this Redis holds the partition's complete
-- history; `origin`: `new` when it was created on a dataset without one (a new Redis, or one that
-- lost everything: they cannot be told apart), `lost` when an instance proved that Redis lost
-- writes it had seen; and `evidence`, the seen id that proved the last loss. Clients positioned
-- before `ms` are told `recovered: false`.
--
-- The proof of a loss is the partition's fan-out stream: every publish appends to it and only its
-- oldest entries are trimmed. An instance that saw (read, or was acknowledged) a fan-out entry
-- that this Redis no longer holds, although it is newer than the oldest one kept, saw writes this
-- Redis lost: a restart from an older RDB or AOF, a failover to a replica that lagged, an
-- eviction. (Comparing with the tail is not enough: after a failover, writes to the promoted
-- replica soon pass the lost ids.) Replication and persistence keep a prefix of the history, so
-- checking the newest id seen covers every older one.

local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function id_less(a, b)
  local a_ms, a_seq = id_parts(a)
  local b_ms, b_seq = id_parts(b)
  if a_ms ~= b_ms then return a_ms < b_ms end
  return a_seq < b_seq
end

local function redis_now_ms()
  local time = redis.call('TIME')
  return string.format('%.0f', tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000))
end

-- Whether the fan-out entry `seen` should be in this Redis and is not. Trimming removes only the
-- oldest entries, and each entry records its predecessor (`p`), so an id missing from the stream
-- was trimmed only if it is at or before the oldest entry's predecessor; an oldest entry with
-- no predecessor (`0-0`) began a new stream, and an empty stream holds nothing at all.
-- `tail` is the stream's newest id when the caller read it already (else nil): the common case,
-- an instance that saw the newest entry, then needs no lookup.
local function lost_seen(fanout_key, seen, tail)
  if seen == '0-0' or seen == tail or #redis.call('XRANGE', fanout_key, seen, seen) == 1 then
    return false
  end
  local oldest = redis.call('XRANGE', fanout_key, '-', '+', 'COUNT', 1)[1]
  if not oldest then
    return true
  end
  local prev = '0-0'
  for i = 1, #oldest[2], 2 do
    if oldest[2][i] == 'p' then prev = oldest[2][i + 1] end
  end
  return prev == '0-0' or id_less(prev, seen)
end

-- Returns the epoch ms (a string) and, when it moved because of a proven loss, the id of the
-- loss marker it appended to the fan-out stream (the caller's new "seen" position); else false.
-- The marker (fields `p` and `lost`) reaches every instance's live reader in order: each closes
-- its streams of the partition, so one that never saw the lost writes does not go on delivering
-- past the hole; the clients resume by id and are told `recovered: false`.
-- `lost` = '1' declares a loss the caller proved otherwise (Redis could evict keys until now).
--
-- The hash keeps the `evidence` of the last proven loss, so calls that carry the same evidence
-- (a pipeline of publishes built before the first of them proved the loss) move nothing again.
--
-- `read`, when the caller read them already: {the HMGET of `ms` and `evidence`, the fan-out
-- stream's newest id ('0-0' if none)}.
local function confirm_epoch(epoch_key, fanout_key, seen, now_ms, lost, read)
  local fields = read and read[1] or redis.call('HMGET', epoch_key, 'ms', 'evidence')
  local ms, evidence = fields[1], fields[2]
  local proven = lost == '1' or (seen ~= evidence and lost_seen(fanout_key, seen, read and read[2]))
  if ms and not proven then
    return ms, false
  end
  if not proven then
    redis.call('HSET', epoch_key, 'ms', now_ms, 'origin', 'new')
    return now_ms, false
  end
  redis.call('HSET', epoch_key, 'ms', now_ms, 'origin', 'lost', 'evidence', lost == '1' and '' or seen)
  local tail = read and read[2]
  if not tail then
    local last = redis.call('XREVRANGE', fanout_key, '+', '-', 'COUNT', 1)[1]
    tail = last and last[1] or '0-0'
  end
  return now_ms, redis.call('XADD', fanout_key, '*', 'p', tail, 'lost', '1')
end
