-- Create or update one entry's definition, versioned, optionally fenced.
--
-- KEYS[1] - entry HASH
-- KEYS[2] - schedule ZSET
-- KEYS[3] - lease key
-- KEYS[4] - statics SET (names that came from beat_schedule)
-- ARGV[1] - lease token, or '' for a write that is not fenced (management API, any process)
-- ARGV[2] - definition JSON
-- ARGV[3] - expected version, or '' to accept any ('0' = the entry must not exist yet,
--           or be a stock RedBeat entry without a version)
-- ARGV[4] - new score (next due timestamp)
-- ARGV[5] - meta JSON written only when the entry has no meta yet
-- ARGV[6] - expected meta as read when the score was computed, or '' for any
--           ('-' = there was no meta); guards the score against a claim in between
-- ARGV[7] - extra hash fields, '' or a JSON object of string values (e.g. `lifecycle`);
--           a value '' deletes the field (absent and '' compare equal)
-- ARGV[8] - entry name to record in the statics SET, or '' (not a static entry)
--
-- A pending manual run (hash field `run_now`) is kept: the score written is never later
-- than the request time, so the leader still sends it at its next tick.
-- A write clears the recorded `state` (finished, expired): the leader decides it again
-- from the new definition and lifetime fields and the run count in `meta`.
--
-- return {1, version} written (version is the new one);
-- return {2, version} unchanged: same definition and fields, nothing written;
-- return {-3, false}  the shard is retired (``reshard`` moved its entries away): nothing
--                     written; read the layout again
-- return {0, false}   fenced out: the lease is not ours;
-- return {-1, version} version conflict: nothing written, version is Redis' current one;
-- return {-2, version} meta changed since read: recompute the score and call again.
local lease = redis.call('GET', KEYS[3])
if ARGV[1] ~= '' and lease ~= ARGV[1] then return {0, false} end
if lease and string.sub(lease, 1, 8) == 'retired ' then return {-3, false} end
if ARGV[8] ~= '' then
    redis.call('SADD', KEYS[4], ARGV[8])
end
local current = redis.call('HMGET', KEYS[1], 'definition', 'version', 'meta', 'run_now')
local version = tonumber(current[2] or '0') or 0
if ARGV[3] ~= '' and tonumber(ARGV[3]) ~= version then
    return {-1, version}
end
if ARGV[6] ~= '' and (current[3] or '-') ~= ARGV[6] then
    return {-2, version}
end
local extra = {}
if ARGV[7] ~= '' then
    extra = cjson.decode(ARGV[7])
end
local same = current[1] == ARGV[2]
if same then
    for field, value in pairs(extra) do
        if (redis.call('HGET', KEYS[1], field) or '') ~= value then
            same = false
        end
    end
end
if same then
    return {2, version}
end
version = version + 1
redis.call('HSET', KEYS[1], 'definition', ARGV[2], 'version', tostring(version))
for field, value in pairs(extra) do
    if value == '' then
        redis.call('HDEL', KEYS[1], field)
    else
        redis.call('HSET', KEYS[1], field, value)
    end
end
redis.call('HDEL', KEYS[1], 'state')
if not current[3] then
    redis.call('HSET', KEYS[1], 'meta', ARGV[5])
end
local score = ARGV[4]
if current[4] and (tonumber(score) < 0 or tonumber(current[4]) < tonumber(score)) then
    score = current[4]
end
redis.call('ZADD', KEYS[2], score, KEYS[1])
return {1, version}
