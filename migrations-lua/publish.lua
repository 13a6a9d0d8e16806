-- publish.lua: append notifications to member streams, atomically: one call may carry several
-- publishes (group commit: the instance gathers concurrent ones), each to one or more members.
--
-- ARGV[1]  retention in ms (MINID trim, key expiry, idempotency record expiry)
-- ARGV[2]  MAX_PER_MEMBER, exact cap of a member stream
-- ARGV[3]  approximate cap of a fan-out stream
-- then, for each publish: 4 + 2n arguments
--   n        how many members it goes to
--   idem     '1' when it has an idempotency key, else '0'
--   type     notification type
--   content  compact JSON text
--   n times: the member id (copied into the fan-out entry), and the newest fan-out id of its
--            partition the instance has seen ('0-0' if none)
-- KEYS: for each publish, for each of its members, per = 4 keys with idempotency, else 3:
--   n:{tag}:s:<member>        the member's stream
--   n:{tag}:live              its partition's fan-out stream (live readers block on it)
--   n:{tag}:epoch             hash: ms = since when the partition's history is complete
--   n:{tag}:i:<member>:<key>  its idempotency record (only with idempotency)
-- The caller passes keys of one slot at a time when Redis is a cluster; a standalone Redis gets
-- every member of a publish in one call, so a publish is all or nothing.
--
-- Returns a flat array, for each publish and member in call order, of {id, repeated, live, lost}:
-- the member's entry id; 1 when it came from an existing idempotency record (nothing was written
-- for that member), else 0; the id of the fan-out entry written for it ('' when repeated), which
-- the instance remembers as seen; and the loss marker appended before it ('' if none).
--
-- The partition's epoch is confirmed (see _epoch.lua, prepended to this script) before its first
-- write: after a failover, the first publish through an instance that saw writes the promoted
-- replica lacks proves the loss here, before its own id (newer than the lost ones) replaces the
-- evidence.
--
-- Nothing half-written: Redis does not roll back a script that fails halfway, so every key of
-- every publish is checked before the first write. A key of another type (something else writes
-- into our key space) fails the whole call with an error naming it, and nothing is stored (the
-- instance then retries the call's publishes one by one, so only the one that names it fails).
--
-- Trimming by age is upkeep, done by the first append whose id falls in a new interval of its
-- stream (a twentieth of the window, at most a minute), not by every append: readers clamp to the
-- window themselves (src/recovery.rs), so what lingers until the next trim is never served. The
-- expiry is renewed by every append: any writer (an older version, migrate-zset) may set it, and a
-- stream that expired less than a window after its newest entry would be taken for a complete
-- history (`recovered: true`) by the clients that missed it.
--
-- Each member entry stores `p`, the id of the entry it followed, so a reader can prove that nothing
-- between a client's position and the next retained entry was trimmed (API.md, `recovered`), and
-- `o`, its ordinal, so unread counts need no scan (see _read.lua). Each fan-out entry stores `p`
-- too, so a live reader detects a gap in its own feed.

local retention_ms = tonumber(ARGV[1])
local retention_text = ARGV[1] -- for commands: a Lua number would be formatted back on every call

local now = redis_now_ms()
local now_ms = tonumber(now)
local min_id = string.format('%.0f-0', now_ms - retention_ms)
-- Without a stream, no entry newer than now - retention can have existed (expiry = retention).
local expired_prev = string.format('%.0f-0', now_ms - retention_ms + 1)
local trim_ms = math.max(1, math.min(60000, math.floor(retention_ms / 20)))
local function trim_interval(id)
  return math.floor(id_parts(id) / trim_ms)
end

-- The publishes: where each one's keys and member arguments start.
local publishes = {}
local arg, key = 4, 1
while arg <= #ARGV do
  local n = tonumber(ARGV[arg])
  local per = ARGV[arg + 1] == '1' and 4 or 3
  publishes[#publishes + 1] = {
    n = n, per = per, kind = ARGV[arg + 2], content = ARGV[arg + 3], arg = arg + 4, key = key,
  }
  arg = arg + 4 + 2 * n
  key = key + per * n
end
if arg ~= #ARGV + 1 or key ~= #KEYS + 1 then
  return redis.error_reply('ERR publish.lua: arguments do not match the key count; nothing was stored')
end

-- Every read first, each key once (the partition keys recur for every member there): they double
-- as the type check, so a key of another type fails the call before its first write.
local reads = {}
local function read_once(k, role, command, ...)
  if reads[k] == nil then
    local reply = redis.pcall(command, k, ...)
    if type(reply) == 'table' and reply.err then
      if string.sub(reply.err, 1, 9) ~= 'WRONGTYPE' then
        return redis.error_reply(reply.err .. ' (reading ' .. k .. '); nothing was stored')
      end
      return redis.error_reply('WRONGTYPE key ' .. k .. ' is not the ' .. role .. ' it should be; '
        .. 'nothing was stored')
    end
    reads[k] = reply
  end
end
for _, p in ipairs(publishes) do
  for i = 0, p.n - 1 do
    local base = p.key + i * p.per
    local failed = read_once(KEYS[base], 'member stream', 'XREVRANGE', '+', '-', 'COUNT', 1)
      or read_once(KEYS[base + 1], 'fan-out stream', 'XREVRANGE', '+', '-', 'COUNT', 1)
      or read_once(KEYS[base + 2], 'epoch hash', 'HMGET', 'ms', 'evidence')
      or (p.per == 4 and read_once(KEYS[base + 3], 'idempotency record', 'GET'))
    if failed then
      return failed
    end
  end
end

-- Then the writes. A stream's `reads` entry stays its newest entry (in XREVRANGE's shape), and a
-- partition's `live_prev` the newest fan-out id, as this call appends.
local live_prev = {}
local result = {}
for _, p in ipairs(publishes) do
  local kind, content = p.kind, p.content
  for i = 0, p.n - 1 do
    local base = p.key + i * p.per
    local stream, live, epoch = KEYS[base], KEYS[base + 1], KEYS[base + 2]
    local idem = p.per == 4 and KEYS[base + 3] or nil
    local member, seen = ARGV[p.arg + 2 * i], ARGV[p.arg + 2 * i + 1]
    local existing = idem and reads[idem]
    if existing then
      result[#result + 1] = existing
      result[#result + 1] = 1
      result[#result + 1] = ''
      result[#result + 1] = ''
    else
      local lost_marker = ''
      if not live_prev[live] then
        local last_live = reads[live][1]
        local tail = last_live and last_live[1] or '0-0'
        local _, marker = confirm_epoch(epoch, live, seen, now, '0', { reads[epoch], tail })
        lost_marker = marker or ''
        live_prev[live] = marker or tail
      end
      local last = reads[stream]
      local prev = last[1] and last[1][1] or expired_prev
      local ordinal = next_ordinal(stream, last)
      local id = redis.call('XADD', stream, 'MAXLEN', '=', ARGV[2], '*',
        'p', prev, 'o', ordinal, 't', kind, 'c', content)
      reads[stream] = { { id, { 'o', ordinal } } }
      if not last[1] or trim_interval(last[1][1]) ~= trim_interval(id) then
        redis.call('XTRIM', stream, 'MINID', '=', min_id)
      end
      redis.call('PEXPIRE', stream, retention_text)

      live_prev[live] = redis.call('XADD', live, 'MAXLEN', '~', ARGV[3], '*',
        'p', live_prev[live], 'm', member, 'i', id, 't', kind, 'c', content)

      if idem then
        redis.call('SET', idem, id, 'PX', retention_text)
        reads[idem] = id
      end
      result[#result + 1] = id
      result[#result + 1] = 0
      result[#result + 1] = live_prev[live]
      result[#result + 1] = lost_marker
    end
  end
end
return result
