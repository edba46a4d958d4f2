-- Read the versions of many entries at once (a reconcile's snapshot before loading).
--
-- KEYS[i] - entry HASH i
--
-- return an array: the `version` field of each entry in KEYS order, as stored; '0' for an
--        entry without one (stock RedBeat), '-' for an entry that does not exist, 'not a
--        hash' for a key that holds another type (not an entry: never touched).
local out = {}
for i = 1, #KEYS do
    local kind = redis.call('TYPE', KEYS[i])['ok']
    if kind == 'none' then
        out[i] = '-'
    elseif kind ~= 'hash' then
        out[i] = 'not a hash'
    else
        out[i] = redis.call('HGET', KEYS[i], 'version') or '0'
    end
end
return out
