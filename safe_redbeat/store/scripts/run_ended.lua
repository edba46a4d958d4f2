-- A run of an entry with an overlap policy ended (succeeded, failed for good, revoked):
-- it no longer counts as going. Compare-and-delete: only the run's own field is deleted,
-- so the end of one run never clears another's. Not fenced.
--
-- KEYS[1] - the entry's running HASH (<prefix>:running:<name>)
-- KEYS[2] - the running index ZSET (<prefix>:running)
-- KEYS[3] - the entry key (the index member)
-- ARGV[1] - the run's task id
--
-- When no run of the entry is left, the entry leaves the index.
-- return 1 if the run was recorded (and is deleted), 0 if not (or a key holds another
-- type: nothing written).
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then
    return 0
end
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('TYPE', KEYS[2])['ok'] == 'zset' then
    redis.call('ZREM', KEYS[2], KEYS[3])
end
return removed
