-- migrate_zset.lua: merge one member's old sorted-set notifications into its stream, atomically.
--
-- KEYS[1]  n:{tag}:s:<member>   the member's stream
-- KEYS[2]  n:{tag}:epoch        its partition's epoch hash
-- ARGV[1]  retention in ms
-- ARGV[2]  MAX_PER_MEMBER
-- ARGV[3]  notification type given to migrated entries
-- then pairs ARGV[4 + 2i] = id `<time>-<n>` (n = rank among entries of that millisecond, in
-- sorted-set order), ARGV[5 + 2i] = content (compact JSON), ascending by id.
--
-- Returns {moved, already_there}.
--
-- Stream ids only grow, so old entries cannot be appended behind notifications the service has
-- published meanwhile: the script reads the stream, merges both by id, and rewrites it in one step
-- (readers see the old stream or the merged one, never a mix). Ids are derived from the data, so a
-- second run finds every entry already there and writes nothing. The `p` chain (each entry's
-- predecessor) is rebuilt over the merged history; the first entry's `p` says nothing before it is
-- known, as publish.lua does for a new stream; so are the ordinals (`o`, 1 for the first entry
-- kept). Read positions are left alone: migrated history is unread.
--
-- The migrated history covers the retention window, so the partition's epoch moves back to the
-- window's start if it was later and was only set when the service first met this Redis (origin
-- `new`: after the old system had written these entries). An epoch that marks a proven loss
-- (origin `lost`, or an epoch written before origins were recorded) stays: clients positioned
-- before it missed writes this Redis no longer holds, and migrating old entries does not bring
-- those back.

local retention_ms = tonumber(ARGV[1])
local max_len = tonumber(ARGV[2])
local kind = ARGV[3]
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local window_start = now_ms - retention_ms

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function before(a, b)
  local a_ms, a_seq = parse(a.id)
  local b_ms, b_seq = parse(b.id)
  if a_ms ~= b_ms then return a_ms < b_ms end
  return a_seq < b_seq
end

local merged, present = {}, {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  local fields = {}
  for i = 1, #entry[2], 2 do fields[entry[2][i]] = entry[2][i + 1] end
  merged[#merged + 1] = { id = entry[1], p = fields.p, t = fields.t, c = fields.c }
  present[entry[1]] = true
end

local moved, already = 0, 0
for i = 4, #ARGV, 2 do
  if present[ARGV[i]] then
    already = already + 1
  else
    merged[#merged + 1] = { id = ARGV[i], t = kind, c = ARGV[i + 1], migrated = true }
    moved = moved + 1
  end
end
if moved == 0 then
  return { 0, already }
end

table.sort(merged, before)
-- The cap keeps the newest entries, as publish.lua's MAXLEN does.
local first = math.max(1, #merged - max_len + 1)
redis.call('DEL', KEYS[1])
local prev = string.format('%.0f-0', window_start + 1)
if not merged[first].migrated and merged[first].p then
  prev = merged[first].p
end
for i = first, #merged do
  local e = merged[i]
  redis.call('XADD', KEYS[1], e.id, 'p', prev, 'o', i - first + 1, 't', e.t, 'c', e.c)
  prev = e.id
end
local newest_ms = parse(merged[#merged].id)
redis.call('PEXPIRE', KEYS[1], math.max(1, newest_ms + retention_ms - now_ms))

local epoch, origin = unpack(redis.call('HMGET', KEYS[2], 'ms', 'origin'))
if not epoch then
  redis.call('HSET', KEYS[2], 'ms', string.format('%.0f', window_start), 'origin', 'new')
elseif origin == 'new' and tonumber(epoch) > window_start then
  redis.call('HSET', KEYS[2], 'ms', string.format('%.0f', window_start))
end
return { moved, already }
