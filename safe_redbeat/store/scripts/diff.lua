-- Compare many entries' definitions with desired ones by content hash, in one call.
--
-- KEYS[i]  - entry HASH i
-- ARGV[1]  - the desired digests, 40 hex characters each, in KEYS order (no separator):
--            digest i is the SHA1 (hex) of the desired `definition` JSON of entry i,
--            followed by "\n" and the desired `lifecycle` field when the entry has
--            lifetime fields
--
-- return a flat array listing only the entries that differ, as pairs i, version: i is the
--        1-based position in KEYS, version the entry's current `version` field as stored
--        ('0' without one), '-' if the entry does not exist, or '!' if its key holds another
--        type than a hash (not an entry: the caller leaves it alone). An empty array means
--        every entry is unchanged.
local digests = ARGV[1]
if #digests ~= 40 * #KEYS then
    return redis.error_reply('diff.lua: ARGV[1] must hold 40 hex characters per key')
end
local out = {}
for i = 1, #KEYS do
    local current = redis.pcall('HMGET', KEYS[i], 'definition', 'version', 'lifecycle')
    local content = current[1]
    if content and current[3] and current[3] ~= '' then
        content = content .. '\n' .. current[3]
    end
    if current.err then
        out[#out + 1] = i
        out[#out + 1] = '!'
    elseif not current[1] then
        out[#out + 1] = i
        out[#out + 1] = '-'
    elseif redis.sha1hex(content) ~= string.sub(digests, 40 * i - 39, 40 * i) then
        out[#out + 1] = i
        out[#out + 1] = current[2] or '0'
    end
end
return out
