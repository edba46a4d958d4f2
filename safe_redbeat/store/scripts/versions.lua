-- Read the versions of many entries at once (a reconcile's snapshot before loading).
--
-- KEYS[i] - entry HASH i
--
-- return {versions, odd}: versions is one string holding a token per key, in KEYS order,
--        separated by single spaces: the entry's `version` field when it is a plain number
--        (1 to 15 ASCII digits), '0' for an entry without one (stock RedBeat), '-' for an
--        entry that does not exist, '?' for anything else; odd is a flat array i, text for
--        each '?': the `version` field as stored, or 'not a hash' for a key that holds
--        another type (not an entry: never touched).
local tokens, odd = {}, {}
for i = 1, #KEYS do
    local kind = redis.call('TYPE', KEYS[i])['ok']
    local version
    if kind == 'none' then
        tokens[i] = '-'
    elseif kind ~= 'hash' then
        version = 'not a hash'
    else
        version = redis.call('HGET', KEYS[i], 'version') or '0'
    end
    if version then
        if #version <= 15 and string.find(version, '^%d+$') then
            tokens[i] = version
        else
            tokens[i] = '?'
            odd[#odd + 1] = i
            odd[#odd + 1] = version
        end
    end
end
return {table.concat(tokens, ' '), odd}
