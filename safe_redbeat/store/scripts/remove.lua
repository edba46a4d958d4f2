-- Remove one entry (definition, meta and schedule slot), versioned, optionally fenced.
-- Pending records of occurrences already claimed are left alone: they are still sent.
--
-- KEYS[1] - entry HASH
-- KEYS[2] - schedule ZSET
-- KEYS[3] - lease key
-- KEYS[4..n] - owner SETs the name is dropped from (statics, loader): a name deleted by
--           hand must not stay owned, or a later entry of that name would be removed
--           by a reconcile that no longer returns it
-- ARGV[1] - lease token, or '' for a write that is not fenced
-- ARGV[2] - expected version, or '' to accept any
-- ARGV[3] - entry name (its member in the owner SETs)
--
-- return {1, version}  removed (version it had);
-- return {2, false}    there was no such entry (its ZSET member and statics name dropped);
-- return {-3, false}   the shard is retired (``reshard`` moved its entries away): nothing
--                      written; read the layout again
-- return {0, false}    fenced out;
-- return {-1, version} version conflict, nothing removed.
local lease = redis.call('GET', KEYS[3])
if ARGV[1] ~= '' and lease ~= ARGV[1] then return {0, false} end
if lease and string.sub(lease, 1, 8) == 'retired ' then return {-3, false} end
local function disown()
    for i = 4, #KEYS do
        redis.call('SREM', KEYS[i], ARGV[3])
    end
end
if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('ZREM', KEYS[2], KEYS[1])
    disown()
    return {2, false}
end
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0') or 0
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= version then return {-1, version} end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
disown()
return {1, version}
