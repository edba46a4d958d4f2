-- Claim due occurrences, fenced: nothing is written unless the lease still holds our token.
--
-- KEYS[1]   - lease key
-- KEYS[2]   - schedule ZSET
-- KEYS[3]   - pending HASH (task id -> record of a claimed, unpublished occurrence)
-- KEYS[3+i] - entry HASH of operation i
-- ARGV[1]   - our lease token
-- then 7 values per operation i, starting at ARGV[2 + 7 * (i - 1)]:
--   expected score   - the ZSET score read when the occurrence was planned
--   expected version - the entry's `version` field read then ('0' if it had none)
--   new score        - next due timestamp ('-1' = never again)
--   new meta         - JSON for the `meta` field, or '' to leave meta alone (a plain move)
--   pending record   - '<task id> <JSON>' to record before publishing, or '' (no publish)
--   run_now          - the `run_now` value this operation sends: the request is cleared
--                      only if the field still holds exactly that value; or '' when it
--                      sends none; or '-' to leave any request alone (parking an entry)
--   new state        - 'finished' or 'expired' to record in the entry's `state` field (the
--                      last run of a one-off or of max_runs is claimed in the same step),
--                      or '' to leave it alone
--
-- A `run_now` request that an operation does not send (made after the entry was read) is
-- kept, and unless the operation parks the entry ('-') the new score is never later than
-- the request: the next tick sends it.
--
-- return {1, code_1, ..., code_n} when the lease is ours, with per operation:
--   1 - done;  0 - the score moved meanwhile (claimed by someone, or rescheduled);
--   3 - the definition changed meanwhile (version differs);
--   2 - the entry HASH is gone, or the key holds another type: its ZSET member is dropped
--       (it pointed at no entry); the key itself is left alone.
-- return {0} when the lease is not ours: nothing was written.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return {0}
end
local codes = {1}
local n = #KEYS - 3
for i = 1, n do
    local key = KEYS[3 + i]
    local base = 2 + 7 * (i - 1)
    local code = 1
    if redis.call('TYPE', key)['ok'] ~= 'hash' then
        redis.call('ZREM', KEYS[2], key)
        code = 2
    else
        local score = redis.call('ZSCORE', KEYS[2], key)
        local version = redis.call('HGET', key, 'version') or '0'
        if (not score) or tonumber(score) ~= tonumber(ARGV[base]) then
            code = 0
        elseif version ~= ARGV[base + 1] then
            code = 3
        else
            if ARGV[base + 3] ~= '' then
                redis.call('HSET', key, 'meta', ARGV[base + 3])
            end
            local new_score = ARGV[base + 2]
            local run_now = redis.call('HGET', key, 'run_now')
            if ARGV[base + 5] == '-' then
                run_now = nil  -- parking: a request (even one that reads '-') is left alone
            end
            if run_now and run_now == ARGV[base + 5] then
                redis.call('HDEL', key, 'run_now')
            elseif run_now then
                local requested = tonumber(run_now)
                -- a malformed request (the entry is parked for it) never moves the score
                if requested and requested >= 0 and requested < 9007199254740992
                        and (tonumber(new_score) < 0 or requested < tonumber(new_score)) then
                    new_score = run_now
                end
            end
            redis.call('ZADD', KEYS[2], new_score, key)
            if ARGV[base + 6] ~= '' then
                redis.call('HSET', key, 'state', ARGV[base + 6])
            end
            local record = ARGV[base + 4]
            if record ~= '' then
                local sep = string.find(record, ' ', 1, true)
                redis.call('HSET', KEYS[3], string.sub(record, 1, sep - 1),
                           string.sub(record, sep + 1))
            end
        end
    end
    codes[i + 1] = code
end
return codes
