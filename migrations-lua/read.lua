-- read.lua: move a member's read position forward, count what stays unread, and tell every
-- open stream of the member, in one atomic step ordered with its notifications (one slot).
--
-- KEYS[1]  n:{tag}:s:<member>   the member's stream
-- KEYS[2]  n:{tag}:r:<member>   its read position
-- KEYS[3]  n:{tag}:live         its partition's fan-out stream
-- KEYS[4]  n:{tag}:epoch        its partition's epoch hash
-- ARGV[1]  the target: a stream id, or 'all' for the member's newest notification
-- ARGV[2]  the id just before the retention window
-- ARGV[3]  retention in ms (the position expires one window after its last change)
-- ARGV[4]  approximate cap of the fan-out stream
-- ARGV[5]  the member id (copied into the fan-out entry)
-- ARGV[6]  the newest fan-out id of the partition the instance has seen ('0-0' if none)
--
-- Returns {read_up_to, unread, as_of, fan-out id or '', loss marker or ''}: the state after the
-- call; the fan-out entry written when the position moved (the instance remembers it as seen);
-- the loss marker appended before it, if this call proved a loss (see _epoch.lua).
--
-- The target is clamped to the newest notification (a later one is never pre-read; with none at
-- all nothing moves), and the position only moves forward. When it moves, the fan-out entry
-- (`read` = 1, with the new state) follows every notification up to `as_of` in the partition's
-- fan-out stream, so each stream sends its `event: read` after them.

for _, key in ipairs({ KEYS[1], KEYS[3] }) do
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'none' and kind ~= 'stream' then
    return redis.error_reply('WRONGTYPE key ' .. key .. ' holds a ' .. kind .. ', not a stream')
  end
end
local read_kind = redis.call('TYPE', KEYS[2]).ok
if read_kind ~= 'none' and read_kind ~= 'string' then
  return redis.error_reply('WRONGTYPE key ' .. KEYS[2] .. ' holds a ' .. read_kind .. ', not a string')
end

local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local newest_id = newest and newest[1] or '0-0'
local target = ARGV[1] == 'all' and newest_id or ARGV[1]
if id_less(newest_id, target) then target = newest_id end
local current = redis.call('GET', KEYS[2]) or '0-0'

local moved = id_less(current, target)
local live_id, lost_marker = '', ''
if moved then
  local _, marker = confirm_epoch(KEYS[4], KEYS[3], ARGV[6], redis_now_ms(), '0')
  lost_marker = marker or ''
  redis.call('SET', KEYS[2], target, 'PX', ARGV[3])
end
local state = read_state(KEYS[1], KEYS[2], ARGV[2], newest_retained(KEYS[1], ARGV[2]))
if moved then
  local last_live = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)[1]
  live_id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
    'p', last_live and last_live[1] or '0-0', 'm', ARGV[5], 'read', '1',
    'r', state[1], 'u', state[2], 'a', state[3])
end
return { state[1], state[2], state[3], live_id, lost_marker }
