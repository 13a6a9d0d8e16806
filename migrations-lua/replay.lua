-- replay.lua: everything `recovered` needs about a member's replay, read in one atomic step with
-- the replay's first page on the Redis that serves it. On a standalone Redis the instance sends it
-- in one MULTI/EXEC with the page's XRANGE, so the page reaches the instance as Redis's own reply
-- (not converted to Lua tables and back: a reconnect storm reads a million entries). On a cluster,
-- where a redirect inside MULTI would only abort the transaction, the script reads the page itself
-- (ARGV[5]). See _epoch.lua, prepended.
--
-- KEYS[1]  n:{tag}:s:<member>   the member's stream
-- KEYS[2]  n:{tag}:epoch        its partition's epoch hash
-- KEYS[3]  n:{tag}:live         its partition's fan-out stream
-- KEYS[4]  n:{tag}:r:<member>   its read position
-- ARGV[1]  replay start: the page holds the entries strictly after this id
-- ARGV[2]  the newest fan-out id this instance has seen in the partition ('0-0' if none)
-- ARGV[3]  the id just before the retention window
-- ARGV[4]  the resume position the read state is counted at (`as_of`; the stream's newest id if
--          it is later), or '' for the newest retained entry at or before the replay start (a
--          `last_message` resume)
-- ARGV[5]  optional: how many entries after the replay start to return as well
--
-- Returns {epoch ms, Redis time ms, newest member-stream id or '', loss marker id or '',
-- read_up_to, unread, as_of}, then the entries (as XRANGE) when ARGV[5] is given: the marker when
-- the epoch moved because Redis lost writes the instance saw; the read state as of the resume
-- position (_read.lua).
--
-- The epoch is confirmed here, not only when a live reader reconnects: after a failover the
-- command connection may reach the promoted replica seconds before the reader does, and a
-- client judged in between must already see the loss.

local now_ms = redis_now_ms()
local epoch, lost_at = confirm_epoch(KEYS[2], KEYS[3], ARGV[2], now_ms, '0')
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local as_of = ARGV[4]
if as_of == '' then
  local before = redis.call('XREVRANGE', KEYS[1], ARGV[1], '(' .. ARGV[3], 'COUNT', 1)[1]
  as_of = before and before[1] or '0-0'
else
  -- A position the stream never issued continues from its newest id: count from there too, or
  -- the notifications between the two would never be counted.
  local newest_id = newest[1] and newest[1][1] or '0-0'
  if id_less(newest_id, as_of) then as_of = newest_id end
end
local state = read_state(KEYS[1], KEYS[4], ARGV[3], as_of)
local reply = { epoch, now_ms, newest[1] and newest[1][1] or '', lost_at or '', state[1], state[2],
  state[3] }
if ARGV[5] then
  reply[8] = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[5])
end
return reply
