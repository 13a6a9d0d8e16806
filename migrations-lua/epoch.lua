-- epoch.lua: confirm a partition's dataset epoch when a live reader (re)connects (see _epoch.lua,
-- prepended to this script).
--
-- KEYS[1]  n:{tag}:epoch   the partition's epoch hash
-- KEYS[2]  n:{tag}:live    its fan-out stream
-- ARGV[1]  the newest fan-out id this instance has seen in the partition ('0-0' if none)
-- ARGV[2]  '1' to declare a loss the instance proved otherwise (keys may have been evicted)
--
-- Returns {epoch ms, loss marker id or ''}: the marker when the epoch moved because Redis lost
-- writes the instance had seen.

local epoch, lost_at = confirm_epoch(KEYS[1], KEYS[2], ARGV[1], redis_now_ms(), ARGV[2])
return { epoch, lost_at or '' }
