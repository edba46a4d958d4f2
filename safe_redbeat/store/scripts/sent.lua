-- Record that the last message of each entry went out late (a publish that hung on the
-- broker, a republish after an outage), so that whichever replica leads next skips the
-- slots that passed meanwhile: the late message is the entry's run for them
-- (model/decide.py). Not fenced: it records a publish that happened.
--
-- KEYS[1..n] - entry HASHes
-- return the number of entries recorded; a key that holds no entry hash is left alone.
local now = redis.call('TIME')[1]
local recorded = 0
for i = 1, #KEYS do
    if redis.call('TYPE', KEYS[i]).ok == 'hash'
        and redis.call('HEXISTS', KEYS[i], 'definition') == 1 then
        redis.call('HSET', KEYS[i], 'sent_at', now)
        recorded = recorded + 1
    end
end
return recorded
