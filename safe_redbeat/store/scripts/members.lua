-- Read every member of a SET as one string (a reconcile's snapshot of the names a source
-- owns): one reply instead of one per member, which a client parses much faster. Read-only.
--
-- KEYS[1] - the SET
--
-- return {count, members}: count is the SET's size, members every member joined by "\n".
--        A member that holds "\n" itself makes the split yield more than count parts: the
--        caller then reads the SET with SMEMBERS instead.
local members = redis.call('SMEMBERS', KEYS[1])
return {#members, table.concat(members, '\n')}
