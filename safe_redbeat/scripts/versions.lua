-- Read the versions of many entries at once (a reconcile's snapshot before loading).
--
-- KEYS[i] - entry HASH i
--
-- return an array: the `version` field of each entry in KEYS order, as stored; '0' for an
--        entry without one (stock RedBeat), '-' for an entry that does not exist.
local out = {}
for i = 1, #KEYS do
    local version = redis.call('HGET', KEYS[i], 'version')
    if version then
        out[i] = version
    elseif redis.call('EXISTS', KEYS[i]) == 1 then
        out[i] = '0'
    else
        out[i] = '-'
    end
end
return out
