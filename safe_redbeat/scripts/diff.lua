-- Compare many entries' definitions with desired ones by content hash, in one call.
--
-- KEYS[i] - entry HASH i
-- ARGV[i] - SHA1 (hex) of the desired `definition` JSON of entry i
--
-- return a flat array listing only the entries that differ, as pairs i, version: i is the
--        1-based position in KEYS, version the entry's current `version` field as stored
--        ('0' without one), or '-' if the entry does not exist. An empty array means every
--        entry is unchanged.
local out = {}
for i = 1, #KEYS do
    local current = redis.call('HMGET', KEYS[i], 'definition', 'version')
    if not current[1] then
        out[#out + 1] = i
        out[#out + 1] = '-'
    elseif redis.sha1hex(current[1]) ~= ARGV[i] then
        out[#out + 1] = i
        out[#out + 1] = current[2] or '0'
    end
end
return out
