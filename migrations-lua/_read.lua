-- _read.lua: read positions and exact unread counts, shared by publish.lua, replay.lua,
-- read.lua and unread.lua (prepended after _epoch.lua when the service is built).
--
-- A member's read position is n:{tag}:r:<member>, a string holding a stream id ('0-0' when
-- absent), in the member's slot. Each member-stream entry stores `o`, its ordinal: the previous
-- entry's plus one (1 for a stream's first entry), so the number of entries between two entries
-- is the difference of their ordinals, whatever the stream's length: two O(log n) lookups, no
-- scan. Entries written before ordinals existed have no `o`; a range that touches one is counted
-- entry by entry (bounded by MAX_PER_MEMBER, and such entries expire within one retention window).

-- The `o` of an entry's field list, or nil.
local function ordinal(fields)
  for i = 1, #fields, 2 do
    if fields[i] == 'o' then return tonumber(fields[i + 1]) end
  end
  return nil
end

-- The ordinal for an entry appended after `last` (an XREVRANGE ... COUNT 1 reply).
local function next_ordinal(last)
  local o = last[1] and ordinal(last[1][2])
  return o and o + 1 or 1
end

-- The later of two ids.
local function id_max(a, b)
  if id_less(a, b) then return b end
  return a
end

-- How many entries of `stream` have lo < id <= hi.
local function count_between(stream, lo, hi)
  if not id_less(lo, hi) then return 0 end
  local first = redis.call('XRANGE', stream, '(' .. lo, hi, 'COUNT', 1)[1]
  if not first then return 0 end
  local last = redis.call('XREVRANGE', stream, hi, '(' .. lo, 'COUNT', 1)[1]
  local from, to = ordinal(first[2]), ordinal(last[2])
  if from and to then return to - from + 1 end
  return #redis.call('XRANGE', stream, '(' .. lo, hi)
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
