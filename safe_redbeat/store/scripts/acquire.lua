-- Take the lease if nobody holds it, and hand out a new fence number.
--
-- KEYS[1] - lease key (RedBeat's lock key, so stock RedBeat replicas are excluded too)
-- KEYS[2] - fence key: the last fence number handed out
-- ARGV[1] - holder description (JSON: host, pid, name, nonce)
-- ARGV[2] - lease time in milliseconds
--
-- return {1, token, fence} if the lease was free and is now ours; the token is
--        "<fence> <holder JSON>" and is what every fenced write compares against;
-- return {0, current value, pttl} if somebody holds it.
--
-- The fence is max(last + 1, Redis TIME in microseconds): it grows with every
-- acquisition and, after Redis lost its data, starts above any number handed out before
-- (as long as Redis' clock does not step back). 2^53 microseconds is year 2255, so the
-- number stays exact in Lua's doubles.
local current = redis.call('GET', KEYS[1])
if current then
    return {0, current, redis.call('PTTL', KEYS[1])}
end
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local fence = math.max(last + 1, now_us)
local fence_str = string.format('%d', fence)
redis.call('SET', KEYS[2], fence_str)
local token = fence_str .. ' ' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return {1, token, fence_str}
