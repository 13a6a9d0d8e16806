-- publish.lua: append one notification to several member streams, atomically.
--
-- For each member i (0-based), with per = 4 when ARGV[4] == '1' (idempotency) and 3 otherwise:
--   KEYS[i*per + 1]  n:{tag}:s:<member>        the member's stream
--   KEYS[i*per + 2]  n:{tag}:live              its partition's fan-out stream (live readers block on it)
--   KEYS[i*per + 3]  n:{tag}:epoch             hash: ms = since when the partition's history is complete
--   KEYS[i*per + 4]  n:{tag}:i:<member>:<key>  its idempotency record (only with idempotency)
--   ARGV[7 + 2i]     the member id (copied into the fan-out entry)
--   ARGV[8 + 2i]     the newest fan-out id of its partition the instance has seen ('0-0' if none)
-- The caller passes keys of one slot at a time when Redis is a cluster; a standalone Redis gets
-- every member in one call, so a publish is all or nothing.
--
-- ARGV[1]  retention in ms (MINID trim, key expiry, idempotency record expiry)
-- ARGV[2]  MAX_PER_MEMBER, exact cap of a member stream
-- ARGV[3]  approximate cap of a fan-out stream
-- ARGV[4]  '1' when idempotency records are used, else '0'
-- ARGV[5]  notification type
-- ARGV[6]  content, compact JSON text
--
-- Returns a flat array {id_1, repeated_1, live_1, lost_1, id_2, ...}: each member's entry id; 1
-- when it came from an existing idempotency record (nothing was written for that member), else 0;
-- the id of the fan-out entry written for it ('' when repeated), which the instance remembers as
-- seen; and the loss marker appended before it ('' if none).
--
-- The partition's epoch is confirmed (see _epoch.lua, prepended to this script) before its first
-- write: after a failover, the first publish through an instance that saw writes the promoted
-- replica lacks proves the loss here, before its own id (newer than the lost ones) replaces the
-- evidence.
--
-- Nothing half-written: Redis does not roll back a script that fails halfway, so every key is
-- checked before the first write. A key of another type (something else writes into our key
-- space) fails the whole call with an error naming it, and nothing is stored.
--
-- Each member entry stores `p`, the id of the entry it followed, so a reader can prove that nothing
-- between a client's position and the next retained entry was trimmed (API.md, `recovered`), and
-- `o`, its ordinal, so unread counts need no scan (see _read.lua). Each fan-out entry stores `p`
-- too, so a live reader detects a gap in its own feed.

local retention_ms = tonumber(ARGV[1])
local per = ARGV[4] == '1' and 4 or 3
local kind, content = ARGV[5], ARGV[6]

local now = redis_now_ms()
local now_ms = tonumber(now)
local min_id = string.format('%.0f-0', now_ms - retention_ms)
-- Without a stream, no entry newer than now - retention can have existed (expiry = retention).
local expired_prev = string.format('%.0f-0', now_ms - retention_ms + 1)

local members = (#ARGV - 6) / 2
local expected = { 'stream', 'stream', 'hash', 'string' }
for i = 0, members - 1 do
  for k = 1, per do
    local key = KEYS[i * per + k]
    local kind_of = redis.call('TYPE', key).ok
    if kind_of ~= 'none' and kind_of ~= expected[k] then
      return redis.error_reply('WRONGTYPE key ' .. key .. ' holds a ' .. kind_of .. ', not a '
        .. expected[k] .. '; nothing was stored')
    end
  end
end

local live_prev = {}
local result = {}
for i = 0, members - 1 do
  local stream, live, epoch = KEYS[i * per + 1], KEYS[i * per + 2], KEYS[i * per + 3]
  local idem = per == 4 and KEYS[i * per + 4] or nil
  local existing = idem and redis.call('GET', idem)
  if existing then
    result[#result + 1] = existing
    result[#result + 1] = 1
    result[#result + 1] = ''
    result[#result + 1] = ''
  else
    local lost_marker = ''
    if not live_prev[live] then
      local _, marker = confirm_epoch(epoch, live, ARGV[8 + 2 * i], now, '0')
      lost_marker = marker or ''
      local last_live = redis.call('XREVRANGE', live, '+', '-', 'COUNT', 1)
      live_prev[live] = last_live[1] and last_live[1][1] or '0-0'
    end
    local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
    local prev = last[1] and last[1][1] or expired_prev
    local id = redis.call('XADD', stream, 'MAXLEN', '=', ARGV[2], '*',
      'p', prev, 'o', next_ordinal(stream, last), 't', kind, 'c', content)
    redis.call('XTRIM', stream, 'MINID', '=', min_id)
    redis.call('PEXPIRE', stream, retention_ms)

    live_prev[live] = redis.call('XADD', live, 'MAXLEN', '~', ARGV[3], '*',
      'p', live_prev[live], 'm', ARGV[7 + 2 * i], 'i', id, 't', kind, 'c', content)

    if idem then
      redis.call('SET', idem, id, 'PX', retention_ms)
    end
    result[#result + 1] = id
    result[#result + 1] = 0
    result[#result + 1] = live_prev[live]
    result[#result + 1] = lost_marker
  end
end
return result
