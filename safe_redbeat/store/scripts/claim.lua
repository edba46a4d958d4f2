-- Claim due occurrences, fenced: nothing is written unless the lease still holds our token.
-- With atomic enqueue, an occurrence's task message is pushed onto its broker queue in the
-- same step: it is enqueued exactly when it is claimed, and never by a stale leader.
--
-- KEYS[1]       - lease key
-- KEYS[2]       - schedule ZSET
-- KEYS[3]       - pending HASH (task id -> record of a claimed, unpublished occurrence)
-- KEYS[3+i]     - entry HASH of operation i, i = 1..n
-- KEYS[3+n+j]   - broker queue key j (a kombu queue LIST), j = 1..q (atomic enqueue only)
-- ARGV[1]       - our lease token
-- ARGV[2]       - n, the number of operations
-- ARGV[3]       - the broker's database index when it differs from the schedule's, or ''
-- ARGV[4]       - the schedule's database index (to select back), or '' with ARGV[3] ''
-- then 8 values per operation i, starting at ARGV[5 + 8 * (i - 1)]:
--   expected score   - the ZSET score read when the occurrence was planned
--   expected version - the entry's `version` field read then ('0' if it had none)
--   new score        - next due timestamp ('-1' = never again)
--   new meta         - JSON for the `meta` field, or '' to leave meta alone (a plain move)
--   pending record   - '<task id> <JSON>' to record before publishing, or '' (no publish,
--                      or a message pushed here)
--   run_now          - the `run_now` value this operation sends: the request is cleared
--                      only if the field still holds exactly that value; or '' when it
--                      sends none; or '-' to leave any request alone (parking an entry)
--   new state        - 'finished' or 'expired' to record in the entry's `state` field (the
--                      last run of a one-off or of max_runs is claimed in the same step),
--                      or '' to leave it alone
--   pushes           - m, how many broker commands enqueue this operation's message (0:
--                      none)
-- then, after the operations' values, 3 values per broker command, operation by operation
-- (m_1 commands of operation 1, then those of operation 2, ...):
--   verb  - 'lpush' (push the message) or 'pexpire' (a queue with x-expires)
--   queue - j, the command's key is KEYS[3+n+j]
--   value - the message (lpush) or milliseconds (pexpire)
--
-- An operation's broker commands run only if it is claimed, right before its claim writes:
-- at any point each operation is either wholly done (message pushed, occurrence claimed)
-- or not at all. Queue keys are checked before anything is written: a queue key that holds
-- another type than a LIST, or one the connection's ACL user may not write (Redis 7+),
-- fails its operations (code 4) and writes nothing for them.
--
-- A `run_now` request that an operation does not send (made after the entry was read) is
-- kept, and unless the operation parks the entry ('-') the new score is never later than
-- the request: the next tick sends it.
--
-- return {1, code_1, ..., code_n} when the lease is ours, with per operation:
--   1 - done;  0 - the score moved meanwhile (claimed by someone, or rescheduled);
--   3 - the definition changed meanwhile (version differs);
--   2 - the entry HASH is gone, or the key holds another type: its ZSET member is dropped
--       (it pointed at no entry); the key itself is left alone;
--   4 - its message cannot be pushed (a queue key of another type, or not writable):
--       nothing written.
-- return {0} when the lease is not ours: nothing was written.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return {0}
end
local n = tonumber(ARGV[2])
local broker_db, schedule_db = ARGV[3], ARGV[4]
local first_command = 5 + 8 * n

-- the queue keys, checked once each, in the broker's database
local pushable, checked = {}, {}
if first_command <= #ARGV then
    if broker_db ~= '' then
        redis.call('SELECT', broker_db)
    end
    for c = first_command, #ARGV, 3 do
        local verb, j = ARGV[c], tonumber(ARGV[c + 1])
        if verb ~= 'lpush' and verb ~= 'pexpire' then
            return redis.error_reply('claim.lua: unknown broker command ' .. verb)
        end
        if not checked[verb .. j] then
            checked[verb .. j] = true
            local queue = KEYS[3 + n + j]
            local ok = true
            if verb == 'lpush' then
                local kind = redis.call('TYPE', queue)['ok']
                ok = kind == 'list' or kind == 'none'
            end
            if ok and redis.acl_check_cmd then
                ok = redis.acl_check_cmd(string.upper(verb), queue, ARGV[c + 2])
            end
            pushable[j] = pushable[j] ~= false and ok
        end
    end
    if broker_db ~= '' then
        redis.call('SELECT', schedule_db)
    end
end

local codes = {1}
local command = first_command
for i = 1, n do
    local key = KEYS[3 + i]
    local base = 5 + 8 * (i - 1)
    local pushes = tonumber(ARGV[base + 7])
    local first, last = command, command + 3 * (pushes - 1)
    command = command + 3 * pushes
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
        end
        for c = first, last, 3 do
            if code == 1 and not pushable[tonumber(ARGV[c + 1])] then
                code = 4
            end
        end
        if code == 1 then
            if pushes > 0 then
                if broker_db ~= '' then
                    redis.call('SELECT', broker_db)
                end
                for c = first, last, 3 do
                    redis.call(ARGV[c], KEYS[3 + n + tonumber(ARGV[c + 1])], ARGV[c + 2])
                end
                if broker_db ~= '' then
                    redis.call('SELECT', schedule_db)
                end
            end
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
