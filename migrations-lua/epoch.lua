-- epoch.lua: confirm or move a partition's dataset epoch when a live reader (re)connects.
--
-- KEYS[1]  n:{tag}:epoch   hash: ms = since when this partition's history is complete,
--                          replid = the replication id of the Redis that holds it
-- ARGV[1]  master_replid of the Redis the reader is connected to (INFO replication)
--
-- Returns the epoch in ms.
--
-- A new replication id means a different dataset: a restart without persistence, or a failover to
-- a replica that may lag. Writes acknowledged before it may be gone, so the epoch moves to now and
-- clients positioned before it are told `recovered: false`. An empty replid was left by the
-- publish script when it created the epoch; it is adopted without moving the epoch.

local time = redis.call('TIME')
local now_ms = string.format('%.0f', tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000))
local ms, replid = unpack(redis.call('HMGET', KEYS[1], 'ms', 'replid'))
if not ms or (replid and replid ~= '' and replid ~= ARGV[1]) then
  redis.call('HSET', KEYS[1], 'ms', now_ms, 'replid', ARGV[1])
  return now_ms
end
if replid ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'replid', ARGV[1])
end
return ms
