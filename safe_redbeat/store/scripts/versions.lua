-- Read the versions of many entries at once, with a digest of each one's content (a
-- reconcile's snapshot before loading: a loaded entry whose digest equals the snapshot's
-- is unchanged, with no second read). Read-only.
--
-- KEYS[i] - entry HASH i
--
-- return {versions, odd, digests}: versions is one string holding a token per key, in KEYS
--        order, separated by single spaces: the entry's `version` field when it is a plain
--        number (1 to 15 ASCII digits), '0' for an entry without one (stock RedBeat), '-'
--        for an entry that does not exist, '?' for anything else; odd is a flat array
--        i, text for each '?': the `version` field as stored, or 'not a hash' for a key
--        that holds another type (not an entry: never touched); digests is one string of
--        40 characters per key, in KEYS order: the SHA1 (hex) of the entry's `definition`
--        followed by "\n" and its `lifecycle` field when that is not empty (the content
--        diff.lua compares), or 40 '-' for a key without a definition.
--
-- One HMGET and one SHA1 per key: about 2 µs of Redis time per entry of a usual size.
local NO_DIGEST = string.rep('-', 40)
local tokens, odd, digests = {}, {}, {}
for i = 1, #KEYS do
    local current = redis.pcall('HMGET', KEYS[i], 'version', 'definition', 'lifecycle')
    local version
    if current.err then
        version = 'not a hash' -- WRONGTYPE: the key holds another type
        digests[i] = NO_DIGEST
    else
        version = current[1]
        if not version then
            if current[2] or current[3] or redis.call('EXISTS', KEYS[i]) == 1 then
                version = '0'
            else
                tokens[i] = '-'
            end
        end
        local content = current[2]
        if content then
            if current[3] and current[3] ~= '' then
                content = content .. '\n' .. current[3]
            end
            digests[i] = redis.sha1hex(content)
        else
            digests[i] = NO_DIGEST
        end
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
return {table.concat(tokens, ' '), odd, table.concat(digests)}
