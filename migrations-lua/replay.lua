-- replay.lua: the first page of a member's replay and everything `recovered` needs, read in one
-- atomic step on the Redis that serves it (see _epoch.lua, prepended to this script).
--
-- KEYS[1]  n:{tag}:s:<member>   the member's stream
-- KEYS[2]  n:{tag}:epoch        its partition's epoch hash
-- KEYS[3]  n:{tag}:live         its partition's fan-out stream
-- KEYS[4]  n:{tag}:r:<member>   its read position
-- ARGV[1]  replay start: entries strictly after this id
-- ARGV[2]  how many entries to return at most
-- ARGV[3]  the newest fan-out id this instance has seen in the partition ('0-0' if none)
-- ARGV[4]  the id just before the retention window
-- ARGV[5]  the resume position the read state is counted at (`as_of`; the stream's newest id if
--          it is later), or '' for the newest retained entry at or before the replay start (a
--          `last_message` resume)
--
-- Returns {epoch ms, Redis time ms, newest member-stream id or '', entries (as XRANGE),
-- loss marker id or '', read_up_to, unread, as_of}: the marker when the epoch moved because
-- Redis lost writes the instance saw; the read state as of the resume position (_read.lua).
--
-- The epoch is confirmed here, not only when a live reader reconnects: after a failover the
-- command connection may reach the promoted replica seconds before the reader does, and a
-- client judged in between must already see the loss.

local now_ms = redis_now_ms()
local epoch, lost_at = confirm_epoch(KEYS[2], KEYS[3], ARGV[3], now_ms, '0')
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
local as_of = ARGV[5]
if as_of == '' then
  local before = redis.call('XREVRANGE', KEYS[1], ARGV[1], '(' .. ARGV[4], 'COUNT', 1)[1]
  as_of = before and before[1] or '0-0'
else
  -- A position the stream never issued continues from its newest id: count from there too, or
  -- the notifications between the two would never be counted.
  local newest_id = newest[1] and newest[1][1] or '0-0'
  if id_less(newest_id, as_of) then as_of = newest_id end
end
local state = read_state(KEYS[1], KEYS[4], ARGV[4], as_of)
return { epoch, now_ms, newest[1] and newest[1][1] or '', entries, lost_at or '',
  state[1], state[2], state[3] }
