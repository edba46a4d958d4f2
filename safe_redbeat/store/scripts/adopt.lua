-- Copy one entry into its shard of another layout (`safe-redbeat reshard`), unless the
-- new layout has it already.
--
-- KEYS[1] - the entry's HASH in the new layout
-- KEYS[2] - the schedule ZSET of its new shard
-- ARGV[1] - score (next due timestamp, as the old layout had it)
-- ARGV[2..n] - the entry's hash fields and values as the old layout had them (definition,
--           meta, version, ...): versions and run history move unchanged
--
-- return 1 copied;
-- return 0 the new layout has the entry already (a move that is resumed): nothing written.
if redis.call('EXISTS', KEYS[1]) == 1 then
    return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('ZADD', KEYS[2], ARGV[1], KEYS[1])
return 1
