-- Claim due occurrences, fenced: nothing is written unless the lease still holds our token.
-- With atomic enqueue, an occurrence's task message is pushed onto its broker queue in the
-- same step: it is enqueued exactly when it is claimed, and never by a stale leader.
--
-- KEYS[1]       - lease key
-- KEYS[2]       - schedule ZSET
-- KEYS[3]       - pending HASH (task id -> record of a claimed, unpublished occurrence)
-- KEYS[3+i]     - entry HASH of operation i, i = 1..n
-- KEYS[3+n+j]   - broker queue key j (a kombu queue LIST), j = 1..q (atomic enqueue only)
-- KEYS[...]     - after those: the running HASHes and the running index ZSET of the
--                 operations with an overlap policy, at the positions their values name
-- ARGV[1]       - our lease token
-- ARGV[2]       - n, the number of operations
-- ARGV[3]       - the broker's database index when it differs from the schedule's, or ''
-- ARGV[4]       - the schedule's database index (to select back), or '' with ARGV[3] ''
-- then 9 values per operation i, starting at ARGV[5 + 9 * (i - 1)]:
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
--   overlap          - '' (no overlap policy: send), or, for an occurrence of an entry
--                      whose policy is skip or replace, 7 fields separated by one space:
--                      policy ('skip' or 'replace'), r (the entry's running HASH is
--                      KEYS[r]), x (the running index ZSET is KEYS[x]), max runtime in
--                      ms, the occurrence's task id, the score and the state ('-': none)
--                      to write instead if it is skipped
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
-- Overlap policy. The running HASH of an entry holds its runs that count as going: task
-- id -> '<until ms> <since ms> <state>' in Redis time (state 'sent' by this script,
-- 'running' once a worker started it). A run counts while now < min(until, since + max
-- runtime); other fields are deleted here. If a run other than this occurrence counts,
-- 'skip' sends nothing: the score and state to write if skipped are written, the run
-- count, meta and any pushes are not (code 5); 'replace' sends as usual, and the running
-- task ids are returned for the caller to revoke. Every occurrence sent under a policy
-- is recorded: field <task id> = '<now + max runtime> <now> sent', the HASH expires with
-- its last run, and the index holds the entry key with that time as its score (and
-- expires with the last run it names).
--
-- return {1, code_1, ..., code_n, i, task id, i, task id, ...} when the lease is ours,
-- with per operation:
--   1 - done;  0 - the score moved meanwhile (claimed by someone, or rescheduled);
--   3 - the definition changed meanwhile (version differs);
--   2 - the entry HASH is gone, or the key holds another type: its ZSET member is dropped
--       (it pointed at no entry); the key itself is left alone;
--   4 - its message cannot be pushed (a queue key of another type, or not writable):
--       nothing written;
--   5 - skipped: another run of the entry still counts (overlap policy 'skip');
-- and after the codes, one pair per run that still counted for operation i (codes 1 and
-- 5): i and the run's task id.
-- return {0} when the lease is not ours: nothing was written.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return {0}
end
local n = tonumber(ARGV[2])
local broker_db, schedule_db = ARGV[3], ARGV[4]
local first_command = 5 + 9 * n

-- Redis' clock in ms, read once when an operation has an overlap policy
local now_ms
local function clock()
    if not now_ms then
        local t = redis.call('TIME')
        now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    return now_ms
end

-- whether `key` may be written as a `kind` (it is one, or does not exist)
local function usable(key, kind)
    local found = redis.call('TYPE', key)['ok']
    return found == kind or found == 'none'
end

-- the index expires with the last run it names
local function expire_with_last(index)
    local last = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
    if last[2] then
        redis.call('PEXPIREAT', index, last[2])
    end
end

-- moves the entry `key` to `new_score` in the schedule: a manual run request that reads
-- `consumed` was this occurrence and is deleted; another request earlier than
-- `new_score` is where the entry goes instead (a malformed one, which parks the entry,
-- never moves the score); `consumed` '-' (parking) leaves any request alone, even one
-- that reads '-'
local function move_on(key, new_score, consumed)
    local run_now = redis.call('HGET', key, 'run_now')
    if consumed == '-' then
        run_now = nil
    end
    if run_now and run_now == consumed then
        redis.call('HDEL', key, 'run_now')
    elseif run_now then
        local requested = tonumber(run_now)
        if requested and requested >= 0 and requested < 9007199254740992
                and (tonumber(new_score) < 0 or requested < tonumber(new_score)) then
            new_score = run_now
        end
    end
    redis.call('ZADD', KEYS[2], new_score, key)
end

-- the runs of an entry that still count, other than `task_id`; deletes the others
-- (expired, or unreadable); returns their task ids and the latest `until` of those kept
local function running(marker, task_id, max_ms)
    local now = clock()
    local fields = redis.call('HGETALL', marker)
    local others, latest = {}, 0
    for f = 1, #fields, 2 do
        local untils, since = string.match(fields[f + 1], '^(%d+) (%d+) ')
        local until_ms = tonumber(untils)
        if until_ms and tonumber(since) + max_ms < until_ms then
            until_ms = tonumber(since) + max_ms
        end
        if not until_ms or until_ms <= now then
            redis.call('HDEL', marker, fields[f])
        else
            if fields[f] ~= task_id then
                others[#others + 1] = fields[f]
            end
            if until_ms > latest then
                latest = until_ms
            end
        end
    end
    return others, latest
end

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
local overlapping = {}
local pruned = false
local command = first_command
for i = 1, n do
    local key = KEYS[3 + i]
    local base = 5 + 9 * (i - 1)
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
        -- the overlap policy: does another run of the entry still count?
        local overlap, marker, index, max_ms, task_id = ARGV[base + 8], nil, nil, 0, nil
        local unsent_score, unsent_state = nil, nil
        local recorded_until = 0
        if code == 1 and overlap ~= '' then
            local policy, r, x, ms, id, score, state = string.match(
                overlap, '^(%a+) (%d+) (%d+) (%d+) (%S+) (%-?%d+) (%S+)$')
            if not policy or (policy ~= 'skip' and policy ~= 'replace') then
                return redis.error_reply('claim.lua: bad overlap value ' .. overlap)
            end
            marker, index, max_ms, task_id = KEYS[tonumber(r)], KEYS[tonumber(x)], tonumber(ms), id
            unsent_score, unsent_state = score, state
            if not usable(marker, 'hash') or not usable(index, 'zset') then
                marker = nil  -- another program's key of another type: sent, not tracked
            else
                local others, latest = running(marker, task_id, max_ms)
                for _, other in ipairs(others) do
                    overlapping[#overlapping + 1] = i
                    overlapping[#overlapping + 1] = other
                end
                if not pruned then
                    redis.call('ZREMRANGEBYSCORE', index, '-inf', string.format('%d', clock()))
                    pruned = true
                end
                if #others > 0 and policy == 'skip' then
                    code = 5
                else
                    recorded_until = math.max(clock() + max_ms, latest)
                end
            end
        end
        if code == 5 then
            -- skipped: the slot moves on as if it had been skipped; nothing is sent
            move_on(key, unsent_score, ARGV[base + 5])  -- a manual run it was is skipped
            if unsent_state ~= '-' then
                redis.call('HSET', key, 'state', unsent_state)
            end
        end
        if code == 1 then
            if marker then
                local now = clock()
                redis.call('HSET', marker, task_id,
                           string.format('%d %d sent', now + max_ms, now))
                redis.call('PEXPIREAT', marker, string.format('%d', recorded_until))
                redis.call('ZADD', index, string.format('%d', recorded_until), key)
                expire_with_last(index)
            end
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
            move_on(key, ARGV[base + 2], ARGV[base + 5])
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
for _, value in ipairs(overlapping) do
    codes[#codes + 1] = value
end
return codes
