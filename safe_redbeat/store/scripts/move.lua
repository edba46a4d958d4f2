-- Move or update records between two HASHes, compare-and-set on the source value.
-- Used for pending records (a failed publish attempt is counted on the record; after the
-- last attempt the record moves to the dead-letter HASH) and by `safe-redbeat dead`
-- (retry: dead -> pending; drop: delete from dead).
--
-- KEYS[1] - lease key
-- KEYS[2] - source HASH
-- KEYS[3] - destination HASH (may be the source: an update in place)
-- ARGV[1] - lease token, or '' for a write that is not fenced
-- ARGV[2] - most fields the destination may hold, or '' for no bound
-- then 3 values per record i, starting at ARGV[3 + 3 * (i - 1)]:
--   field    - the record's field (a task id)
--   expected - the value the caller read from the source
--   new      - the value to write to the destination; with the destination the source,
--              '' deletes the record (a record moved elsewhere keeps its value, even '')
--
-- return {1, code_1, ..., code_n} with per record:
--   1 - done;  0 - the source value changed or is gone (published, retried or dropped
--   meanwhile): nothing written;  2 - the destination is full: left in the source.
-- return {0} when the lease is not ours: nothing was written.
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return {0}
end
local limit = tonumber(ARGV[2])
local codes = {1}
local n = (#ARGV - 2) / 3
for i = 1, n do
    local base = 3 + 3 * (i - 1)
    local field, expected, new = ARGV[base], ARGV[base + 1], ARGV[base + 2]
    local code = 1
    if redis.call('HGET', KEYS[2], field) ~= expected then
        code = 0
    elseif new == '' and KEYS[3] == KEYS[2] then
        redis.call('HDEL', KEYS[2], field)
    elseif KEYS[3] == KEYS[2] then
        redis.call('HSET', KEYS[2], field, new)
    elseif limit and redis.call('HLEN', KEYS[3]) >= limit
            and redis.call('HEXISTS', KEYS[3], field) == 0 then
        code = 2
    else
        redis.call('HSET', KEYS[3], field, new)
        redis.call('HDEL', KEYS[2], field)
    end
    codes[i + 1] = code
end
return codes
