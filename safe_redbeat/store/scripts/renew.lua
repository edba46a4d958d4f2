-- Extend the lease to a full lease time, if it is still ours.
--
-- KEYS[1] - lease key
-- ARGV[1] - our lease token
-- ARGV[2] - lease time in milliseconds
--
-- return {1, token} if renewed;
-- return {0, false} if the key is gone (deleted, expired, Redis lost its data);
-- return {-1, current value} if somebody else holds it.
local current = redis.call('GET', KEYS[1])
if not current then
    return {0, false}
end
if current ~= ARGV[1] then
    return {-1, current}
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, current}
