-- Compare many entries' definitions with desired ones by content hash, in one call.
--
-- KEYS[i] - entry HASH i
-- ARGV[i] - SHA1 (hex) of the desired `definition` JSON of entry i, followed by "\n" and
--           the desired `lifecycle` field when the entry has lifetime fields
--
-- return one string listing only the entries that differ, joined by ',', each as
--        '<i> <version>': i is the 1-based position in KEYS, version the entry's current
--        `version` ('0' without one), or '-' if the entry does not exist.
--        An empty string means every entry is unchanged.
local out = {}
for i = 1, #KEYS do
    local current = redis.call('HMGET', KEYS[i], 'definition', 'version', 'lifecycle')
    local content = current[1]
    if content and current[3] and current[3] ~= '' then
        content = content .. '\n' .. current[3]
    end
    if not current[1] then
        out[#out + 1] = i .. ' -'
    elseif redis.sha1hex(content) ~= ARGV[i] then
        out[#out + 1] = i .. ' ' .. (current[2] or '0')
    end
end
return table.concat(out, ',')
