-- _epoch.lua: the partition's dataset epoch, shared by epoch.lua and replay.lua (prepended to each
-- when the service is built; not a script of its own).
--
-- The epoch hash n:{tag}:epoch holds `ms`, since when this Redis holds the partition's complete
-- history, and `origin`: `new` when it was created on a dataset without one (a new Redis, or one
-- that lost everything: they cannot be told apart), `lost` when an instance proved that Redis lost
-- writes it had acknowledged. Clients positioned before `ms` are told `recovered: false`.
--
-- The proof of a loss is the partition's fan-out stream: every publish appends to it, its newest
-- entry is never trimmed, so its tail only moves forward. An instance that saw (read or was
-- acknowledged) a fan-out id after the tail saw writes this Redis no longer holds: a restart from
-- an older RDB or AOF, a failover to a replica that lagged, an eviction.

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

-- Returns the epoch ms (a string) and, when it moved because of a proven loss, the id of the
-- loss marker it appended to the fan-out stream (the caller's new "seen" position); else false.
-- The marker (fields `p` and `lost`) reaches every instance's live reader in order: each closes
-- its streams of the partition, so one that never saw the lost writes does not go on delivering
-- past the hole; the clients resume by id and are told `recovered: false`.
local function confirm_epoch(epoch_key, fanout_key, seen, now_ms)
  local ms = redis.call('HGET', epoch_key, 'ms')
  if not ms then
    redis.call('HSET', epoch_key, 'ms', now_ms, 'origin', 'new')
    return now_ms, false
  end
  if seen ~= '0-0' then
    local last = redis.call('XREVRANGE', fanout_key, '+', '-', 'COUNT', 1)
    local tail = last[1] and last[1][1] or '0-0'
    if id_less(tail, seen) then
      redis.call('HSET', epoch_key, 'ms', now_ms, 'origin', 'lost')
      return now_ms, redis.call('XADD', fanout_key, '*', 'p', tail, 'lost', '1')
    end
  end
  return ms, false
end
