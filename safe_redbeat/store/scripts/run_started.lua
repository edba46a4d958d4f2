-- A worker started a run of an entry with an overlap policy (skip, replace): record it
-- as going, until max runtime from now, so the leader's claim (claim.lua) sees it. Not
-- fenced: it records what a worker does, whoever leads. Called again when the run starts
-- again (a Celery retry, a redelivered message): its time starts over.
--
-- KEYS[1] - the entry's running HASH (<prefix>:running:<name>): task id ->
--           '<until ms> <since ms> <state>', Redis time
-- KEYS[2] - the running index ZSET (<prefix>:running): entry key -> latest until
-- KEYS[3] - the entry key (the index member)
-- ARGV[1] - the run's task id
-- ARGV[2] - max runtime in ms
--
-- Fields whose time is up are deleted; the HASH expires with its last run, the index
-- with the last run it names.
-- return 1 when recorded; 0 when a key holds another type (nothing written).
for k = 1, 2 do
    local kind = redis.call('TYPE', KEYS[k])['ok']
    if kind ~= 'none' and kind ~= (k == 1 and 'hash' or 'zset') then
        return 0
    end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[2])
local latest = until_ms
local fields = redis.call('HGETALL', KEYS[1])
for f = 1, #fields, 2 do
    local other = tonumber(string.match(fields[f + 1], '^(%d+) '))
    if fields[f] ~= ARGV[1] then
        if not other or other <= now then
            redis.call('HDEL', KEYS[1], fields[f])
        elseif other > latest then
            latest = other
        end
    end
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d %d running', until_ms, now))
redis.call('PEXPIREAT', KEYS[1], string.format('%d', latest))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%d', now))
redis.call('ZADD', KEYS[2], string.format('%d', latest), KEYS[3])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], last[2])
return 1
