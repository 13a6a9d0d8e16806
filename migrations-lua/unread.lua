-- unread.lua: a member's read state as of its newest retained notification (read only).
--
-- KEYS[1]  n:{tag}:s:<member>   the member's stream
-- KEYS[2]  n:{tag}:r:<member>   its read position
-- ARGV[1]  the id just before the retention window
--
-- Returns {read_up_to, unread, as_of} (see _read.lua).

local as_of = newest_retained(KEYS[1], ARGV[1])
return read_state(KEYS[1], KEYS[2], ARGV[1], as_of)
