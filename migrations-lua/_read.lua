-- _read.lua: read positions and exact unread counts, shared by publish.lua, replay.lua,
-- read.lua and unread.lua (prepended after _epoch.lua when the service is built).
--
-- A member's read position is n:{tag}:r:<member>, a string holding a stream id ('0-0' when
-- absent), in the member's slot. Each member-stream entry stores `o`, its ordinal, so the number
-- of entries between two entries is the difference of their ordinals, whatever the stream's
-- length: two O(log n) lookups, no scan.
--
-- Entries written by a version without ordinals (before an upgrade, or by an old instance during
-- a rolling deploy) have no `o`. An entry's ordinal is therefore the newest ordinal before it plus
-- the number of entries since that one, those without `o` included, so any two entries with an
-- ordinal count everything between them exactly. Only entries without `o` at the ends of a range
-- are counted one by one (each step loads one entry); they all expire within one retention window.

local BATCH = 100

-- The `o` of an entry's field list, or nil.
local function ordinal(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'o' then return tonumber(fields[i + 1]) end
  end
  return nil
end

-- The ordinal for an entry appended to `stream` after `last` (its XREVRANGE ... COUNT 1 reply).
local function next_ordinal(stream, last)
  if not last[1] then return 1 end
  local o = ordinal(last[1][2])
  if o then return o + 1 end
  local since, cursor = 1, last[1][1]
  while true do
    local batch = redis.call('XREVRANGE', stream, '(' .. cursor, '-', 'COUNT', BATCH)
    for _, entry in ipairs(batch) do
      o = ordinal(entry[2])
      if o then return o + since + 1 end
      since = since + 1
    end
    if #batch < BATCH then return since + 1 end -- no entry has one: number from the start
    cursor = batch[#batch][1]
  end
end

-- The later of two ids.
local function id_max(a, b)
  if id_less(a, b) then return b end
  return a
end

-- Walks from `entry` towards `stop` in `command`'s direction (XRANGE forward, XREVRANGE back)
-- until an entry with an ordinal: {its ordinal or nil, how many entries without one it passed}.
local function to_ordinal(stream, command, stop, entry)
  local passed = 0
  while entry do
    local o = ordinal(entry[2])
    if o then return o, passed end
    passed = passed + 1
    entry = redis.call(command, stream, '(' .. entry[1], stop, 'COUNT', 1)[1]
  end
  return nil, passed
end

-- Every entry with lo < id <= hi, counted in batches (data that broke the ordinal rule).
local function count_each(stream, lo, hi)
  local n, cursor = 0, '(' .. lo
  while true do
    local batch = redis.call('XRANGE', stream, cursor, hi, 'COUNT', BATCH)
    n = n + #batch
    if #batch < BATCH then return n end
    cursor = '(' .. batch[#batch][1]
  end
end

-- How many entries of `stream` have lo < id <= hi.
local function count_between(stream, lo, hi)
  if not id_less(lo, hi) then return 0 end
  local first = redis.call('XRANGE', stream, '(' .. lo, hi, 'COUNT', 1)[1]
  if not first then return 0 end
  local last = redis.call('XREVRANGE', stream, hi, '(' .. lo, 'COUNT', 1)[1]
  local from, to = ordinal(first[2]), ordinal(last[2])
  if from and to and to >= from then return to - from + 1 end
  local head_o, head = to_ordinal(stream, 'XRANGE', hi, first)
  if not head_o then return head end -- no entry of the range has an ordinal: all counted
  local tail_o, tail = to_ordinal(stream, 'XREVRANGE', '(' .. lo, last)
  if tail_o < head_o then return count_each(stream, lo, hi) end
  return head + (tail_o - head_o + 1) + tail
end

-- `floor` below is the id just before the retention window (the caller's cutoff, the same one
-- replay and history use): entries after it are retained.

-- The member's newest retained entry id, '0-0' when none is.
local function newest_retained(stream, floor)
  local newest = redis.call('XREVRANGE', stream, '+', '(' .. floor, 'COUNT', 1)[1]
  return newest and newest[1] or '0-0'
end

-- {read_up_to, unread, as_of}: the member's read position and how many retained entries follow
-- it up to `as_of`.
local function read_state(stream, read_key, floor, as_of)
  local read_up_to = redis.call('GET', read_key) or '0-0'
  return { read_up_to, count_between(stream, id_max(read_up_to, floor), as_of), as_of }
end
