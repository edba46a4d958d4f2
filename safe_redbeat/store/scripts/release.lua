-- Give the lease up, if it is still ours, so a standby can take over at once.
--
-- KEYS[1] - lease key
-- ARGV[1] - our lease token
--
-- return 1 if released, 0 if it was not ours (anymore).
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
