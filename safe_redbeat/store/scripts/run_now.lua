-- Ask the leader to send one entry once, at its next tick, without touching its schedule.
--
-- KEYS[1] - entry HASH
-- KEYS[2] - schedule ZSET
-- KEYS[3] - lease key
-- ARGV[1] - lease token, or '' for a write that is not fenced (management API, any process)
-- ARGV[2] - expected version, or '' to accept any
--
-- The request is the hash field `run_now` = Redis TIME in whole seconds (a string), and the
-- entry's score moves to that time so the leader reads it at once. The leader's claim sends
-- it with a task id derived from that time, clears `run_now` and puts the regular next due
-- time back; `meta` (last run, run count) and `version` are not changed.
--
-- return {1, time}     requested (time = the `run_now` value written);
-- return {2, false}    there is no such entry (no `definition` field): nothing written;
-- return {-3, false}   the shard is retired (``reshard`` moved its entries away): nothing
--                      written; read the layout again
-- return {0, false}    fenced out: the lease is not ours;
-- return {-1, version} version conflict: nothing written, version is Redis' current one.
local lease = redis.call('GET', KEYS[3])
if ARGV[1] ~= '' and lease ~= ARGV[1] then return {0, false} end
if lease and string.sub(lease, 1, 8) == 'retired ' then return {-3, false} end
if redis.call('HEXISTS', KEYS[1], 'definition') == 0 then
    return {2, false}
end
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0') or 0
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= version then return {-1, version} end
local now = redis.call('TIME')[1]
redis.call('HSET', KEYS[1], 'run_now', now)
redis.call('ZADD', KEYS[2], now, KEYS[1])
return {1, now}
