-- Read what is due, by Redis' clock, in one round trip. Read-only.
--
-- KEYS[1] - schedule ZSET
-- KEYS[2] - seed marker (written by the leader after seeding the schedule)
-- KEYS[3] - pending HASH (claimed occurrences not yet published)
-- ARGV[1] - the most due entries to return
--
-- return {seconds, microseconds, seeded, due, upcoming, pending}:
--   seconds, microseconds - Redis TIME;
--   seeded   - 1 if the seed marker exists, 0 if Redis lost it;
--   due      - {member, score, ...} with score <= seconds, lowest first, at most ARGV[1];
--   upcoming - {member, score} of the first entry due after seconds, or {} if none;
--   pending  - how many pending records there are.
local now = redis.call('TIME')
local due = redis.call('ZRANGEBYSCORE', KEYS[1], 0, now[1], 'WITHSCORES', 'LIMIT', 0, ARGV[1])
local upcoming = redis.call(
    'ZRANGEBYSCORE', KEYS[1], '(' .. now[1], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local seeded = redis.call('EXISTS', KEYS[2])
return {now[1], now[2], seeded, due, upcoming, redis.call('HLEN', KEYS[3])}
