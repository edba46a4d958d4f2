"""The Lua scripts, one file each with its KEYS/ARGV/return contract at the top, and
:class:`Scripts`, the one typed boundary to them.

They ship as plain ``.lua`` files so a service in another language can ``EVAL`` them and get
the same fencing and versioning guarantees. Python code calls them only through
:class:`Scripts`: one method per script, named parameters, a typed result. The positional
KEYS/ARGV lists, the sentinel strings (``''`` for "none" or "any", ``'-'`` for "missing") and
the numeric reply codes are known here and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cache, lru_cache
from importlib.resources import files
from typing import Any, Generic, TypeVar, overload

import redis
from redis.cluster import RedisCluster

from ..keys import Keys

__all__ = [
    "DIGEST_SIZE",
    "NO_DIGEST",
    "AcquireResult",
    "Adopt",
    "Batch",
    "Claim",
    "ClaimCode",
    "ClaimResult",
    "Client",
    "Coded",
    "Due",
    "Fenced",
    "Move",
    "MoveCode",
    "MoveResult",
    "Overlap",
    "Registered",
    "Remove",
    "RemoveCode",
    "RemoveResult",
    "RenewCode",
    "RenewResult",
    "RunNowCode",
    "RunNowResult",
    "Scripts",
    "StoredVersion",
    "StoredVersions",
    "Upsert",
    "UpsertCode",
    "UpsertResult",
    "source",
]

#: A redis-py client (or pipeline) the scripts run on.
Client = redis.Redis | RedisCluster


@cache
def source(name: str) -> str:
    """The text of ``<name>.lua``."""
    return (files(__package__) / f"{name}.lua").read_text(encoding="utf-8")


class Registered:
    """The scripts registered on one client, untyped: EVALSHA, reloaded after NOSCRIPT.

    Called with the ``.lua`` files' own KEYS and ARGV; :class:`Scripts` is the typed way in.
    """

    def __init__(self, client: Client) -> None:
        self.acquire = client.register_script(source("acquire"))
        self.renew = client.register_script(source("renew"))
        self.release = client.register_script(source("release"))
        self.claim = client.register_script(source("claim"))
        self.upsert = client.register_script(source("upsert"))
        self.remove = client.register_script(source("remove"))
        self.run_now = client.register_script(source("run_now"))
        self.versions = client.register_script(source("versions"))
        self.diff = client.register_script(source("diff"))
        self.members = client.register_script(source("members"))
        self.due = client.register_script(source("due"))
        self.move = client.register_script(source("move"))
        self.adopt = client.register_script(source("adopt"))
        self.sent = client.register_script(source("sent"))
        self.run_started = client.register_script(source("run_started"))
        self.run_ended = client.register_script(source("run_ended"))


# -- reply codes -------------------------------------------------------------------------


class RenewCode(IntEnum):
    """``renew.lua``'s answer."""

    RENEWED = 1
    GONE = 0  # the lease key is gone (deleted, expired, Redis lost its data)
    HELD_BY_OTHER = -1


class ClaimCode(IntEnum):
    """``claim.lua``'s answer for one operation."""

    CLAIMED = 1
    SCORE_MOVED = 0  # claimed by someone, or rescheduled, meanwhile
    GONE = 2  # the entry hash is gone (or another type): its slot was dropped
    VERSION_CHANGED = 3
    #: its message cannot be pushed (a queue key of another type, or one the ACL user may
    #: not write): nothing written
    QUEUE_REFUSED = 4
    #: not sent: another run of the entry still counts as going (overlap policy ``skip``);
    #: its slot moved on
    SKIPPED = 5


class UpsertCode(IntEnum):
    """``upsert.lua``'s answer."""

    WRITTEN = 1
    UNCHANGED = 2
    FENCED_OUT = 0
    VERSION_CONFLICT = -1
    META_CHANGED = -2  # a claim moved the run metadata since it was read: recompute
    RETIRED = -3  # the shard was resharded away: read the layout again


class RemoveCode(IntEnum):
    """``remove.lua``'s answer."""

    REMOVED = 1
    NOT_FOUND = 2
    FENCED_OUT = 0
    VERSION_CONFLICT = -1
    RETIRED = -3


class RunNowCode(IntEnum):
    """``run_now.lua``'s answer."""

    REQUESTED = 1
    NOT_FOUND = 2
    FENCED_OUT = 0
    VERSION_CONFLICT = -1
    RETIRED = -3


class MoveCode(IntEnum):
    """``move.lua``'s answer for one record."""

    DONE = 1
    CHANGED = 0  # the source value changed or is gone: nothing written
    FULL = 2  # the destination holds its most fields: left in the source


# -- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AcquireResult:
    """``acquire.lua``: our token and fence, or the current holder's value."""

    acquired: bool
    #: our token if acquired, else the value the lease key holds
    value: str
    fence: int | None = None


@dataclass(frozen=True)
class RenewResult:
    code: RenewCode
    #: the value the lease key holds (ours if renewed), None if it is gone
    current: str | None


C = TypeVar("C", bound=IntEnum)


@dataclass(frozen=True)
class Coded(Generic[C]):
    """A script's answer for one entry: its code and the version it reports."""

    code: C
    #: upsert: the entry's version after the call (None if fenced out); remove: the
    #: version the entry had (removed or conflicting); run_now: Redis' current version on
    #: a version conflict; else None
    version: int | None = None


@dataclass(frozen=True)
class Fenced(Generic[C]):
    """A fenced script's answer: ``fenced_out`` (nothing written) or one code per item."""

    fenced_out: bool
    codes: list[C] = field(default_factory=list)


UpsertResult = Coded[UpsertCode]
RemoveResult = Coded[RemoveCode]
MoveResult = Fenced[MoveCode]


@dataclass(frozen=True)
class ClaimResult(Fenced[ClaimCode]):
    """``claim.lua``'s answer: a code per operation, and for the operations with an
    overlap policy whose entry had other runs going, their task ids (by 0-based index)."""

    running: dict[int, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunNowResult(Coded[RunNowCode]):
    #: the request time (Redis TIME, whole seconds) if requested
    requested_at: int | None = None


@dataclass(frozen=True)
class StoredVersion:
    """An entry's ``version`` field as ``versions.lua`` or ``diff.lua`` read it."""

    #: False if there is no such entry
    exists: bool
    #: the version (0 for an entry without one), None if another program stored something
    #: that is not a version (or the key holds another type)
    number: int | None
    #: the stored text, for messages
    raw: str
    #: False if the key holds another type than a hash (not an entry; never written)
    is_hash: bool = True


@dataclass(frozen=True)
class StoredVersions:
    """``versions.lua``'s answer: each entry's version and content digest, in key order."""

    versions: list[StoredVersion]
    #: the SHA1 (hex) of each entry's content as ``diff.lua`` compares it, one after the
    #: other in key order (:data:`DIGEST_SIZE` characters each; :data:`NO_DIGEST` for an
    #: entry without a definition)
    digests: str


@dataclass(frozen=True)
class Due:
    """``due.lua``: what is due by Redis' clock, in one round trip."""

    seconds: int
    micros: int
    #: False when the seed marker is gone: Redis lost data
    seeded: bool
    #: (entry key, score) due now, lowest score first
    due: list[tuple[str, float]]
    #: (entry key, score) of the first entry due after now, if any
    upcoming: tuple[str, float] | None
    #: how many pending records there are
    pending: int


# -- arguments ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Overlap:
    """The overlap policy of one operation of ``claim.lua`` that sends an occurrence."""

    #: ``skip`` or ``replace``
    policy: str
    #: the entry's running HASH and the running index of its shard
    running_key: str
    running_index: str
    max_runtime_ms: int
    #: the occurrence's task id (its own run never counts against it)
    task_id: str
    #: what the claim writes if it skips the occurrence: the score, and a state or ''
    unsent_score: int
    unsent_state: str = ""


@dataclass(frozen=True)
class Claim:
    """One operation of ``claim.lua``: claim an occurrence (record it pending and move the
    score), or only move the score."""

    key: str
    expected_score: float
    expected_version: str
    new_score: int
    new_meta: str = ""
    #: the ``run_now`` value this claim sends (cleared only if it is still that value);
    #: :data:`~safe_redbeat.store.wire.PARK` parks the entry whatever it holds
    run_now: str = ""
    #: a terminal state recorded in the same claim (``finished``, ``expired``), or ''
    new_state: str = ""
    #: broker commands that enqueue the occurrence's message in the same step (atomic
    #: enqueue): ``(verb, queue key, value)``, verb ``lpush`` or ``pexpire``
    pushes: tuple[tuple[str, str, str], ...] = ()
    #: the entry's overlap policy, when the operation sends an occurrence under one
    overlap: Overlap | None = None

    def pending_record(self) -> str:
        """``'<task id> <record>'`` of the occurrence to record pending, or '' (a move,
        or a message pushed by the claim itself)."""
        return ""


@dataclass(frozen=True)
class Upsert:
    """One ``upsert.lua`` call: create or update an entry's definition."""

    entry_key: str
    #: the SET of names the entry is recorded in when ``owner_name`` is given
    owner_set: str
    definition: str
    #: next due timestamp
    score: int
    #: ``meta`` written only when the entry has none yet
    new_meta: str
    #: ``meta`` as read when ``score`` was computed; None: there was none
    expected_meta: str | None
    #: None accepts any version; 0 means the entry must not exist yet (or be unversioned)
    expected_version: int | None = None
    #: extra hash fields (string values; '' deletes the field)
    fields: Mapping[str, str] = field(default_factory=dict)
    #: name recorded in ``owner_set``, or None
    owner_name: str | None = None
    #: lease token fencing the write, or None for a write that is not fenced
    token: str | None = None


@dataclass(frozen=True)
class Remove:
    """One ``remove.lua`` call: remove an entry, drop ``name`` from ``owner_sets``."""

    entry_key: str
    name: str
    owner_sets: Sequence[str]
    #: None removes any version
    expected_version: int | None = None
    #: lease token fencing the write, or None for a write that is not fenced
    token: str | None = None


@dataclass(frozen=True)
class Move:
    """One record of a ``move.lua`` call."""

    task_id: str
    #: the value read from the source (compare-and-set)
    expected: str
    #: the value to write to the destination; '' with destination = source deletes it
    new: str


@dataclass(frozen=True)
class Adopt:
    """One ``adopt.lua`` call: copy an entry's hash and score into this shard."""

    entry_key: str
    score: float
    #: the hash fields as the old layout stores them
    fields: Mapping[str, str]


R = TypeVar("R")


class Batch(Generic[R]):
    """Script calls of one kind queued on one pipeline; :meth:`execute` decodes the replies."""

    def __init__(self, client: Client, decode: Callable[[Any], R]) -> None:
        self.pipe: Any = client.pipeline(transaction=False)
        self._decode = decode

    def execute(self) -> list[R]:
        try:
            return [self._decode(reply) for reply in self.pipe.execute()]
        finally:
            self.pipe.reset()


# -- the gateway -------------------------------------------------------------------------


class Scripts:
    """The one typed way to run the Lua scripts of one schedule (``keys``) on ``client``."""

    def __init__(self, client: Client, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        #: the registered scripts, called with raw KEYS and ARGV (only from here)
        self.raw = Registered(client)

    # -- the lease ---------------------------------------------------------------------

    def acquire(self, holder: str, lease_ms: int) -> AcquireResult:
        """Take the lease if it is free; ``holder`` is the JSON recorded in the token."""
        ok, value, extra = self.raw.acquire(
            keys=[self.keys.lease, self.keys.fence], args=[holder, lease_ms]
        )
        if int(ok) == 1:
            return AcquireResult(True, str(value), fence=int(extra))
        return AcquireResult(False, str(value))

    def renew(self, token: str, lease_ms: int) -> RenewResult:
        code, current = self.raw.renew(keys=[self.keys.lease], args=[token, lease_ms])
        return RenewResult(RenewCode(int(code)), None if current is None else str(current))

    def release(self, token: str) -> bool:
        """Delete the lease if it still holds ``token``; True if it did."""
        return bool(self.raw.release(keys=[self.keys.lease], args=[token]))

    # -- dispatch ----------------------------------------------------------------------

    def sent_late(self, entry_keys: Sequence[str]) -> int:
        """Record Redis' time as ``sent_at`` of each entry whose message went out late."""
        if not entry_keys:
            return 0
        return int(self.raw.sent(keys=list(entry_keys), args=[]))

    def due(self, limit: int) -> Due:
        """Redis TIME, the seed marker, at most ``limit`` due entries, the next one due."""
        seconds, micros, seeded, flat_due, flat_upcoming, pending = self.raw.due(
            keys=[self.keys.schedule, self.keys.seeded, self.keys.pending], args=[limit]
        )
        return Due(
            seconds=int(seconds),
            micros=int(micros),
            seeded=bool(seeded),
            due=[(str(k), float(v)) for k, v in zip(flat_due[::2], flat_due[1::2], strict=True)],
            upcoming=(str(flat_upcoming[0]), float(flat_upcoming[1])) if flat_upcoming else None,
            pending=int(pending),
        )

    def claim(
        self, token: str, ops: Sequence[Claim], *, databases: tuple[int, int] | None = None
    ) -> ClaimResult:
        """Claim occurrences (record them pending, or push their messages) and move
        scores, fenced by ``token``. ``databases``: (broker, schedule) database indexes
        when the broker's queues live in another database of the same server."""
        queues: dict[str, int] = {}
        commands: list[str] = []
        argv: list[str] = [token, str(len(ops)), *_databases(databases)]
        #: (position in argv, overlap) of the operations with an overlap policy
        overlaps: list[tuple[int, Overlap]] = []
        for op in ops:
            argv += [
                _score_text(op.expected_score),
                op.expected_version,
                str(op.new_score),
                op.new_meta,
                op.pending_record(),
                op.run_now,
                op.new_state,
                str(len(op.pushes)),
                "",
            ]
            if op.overlap is not None:
                overlaps.append((len(argv) - 1, op.overlap))
            for verb, queue, value in op.pushes:
                index = queues.setdefault(queue, len(queues) + 1)
                commands += [verb, str(index), value]
        keys = [
            self.keys.lease,
            self.keys.schedule,
            self.keys.pending,
            *(o.key for o in ops),
            *queues,
        ]
        if overlaps:
            # the running keys after the queues; each value names their (1-based) positions
            running: dict[str, int] = {}
            for position, overlap in overlaps:
                at = [
                    running.setdefault(key, len(keys) + len(running) + 1)
                    for key in (overlap.running_key, overlap.running_index)
                ]
                argv[position] = _overlap_text(overlap, *at)
            keys += running
        reply = self.raw.claim(keys=keys, args=argv + commands)
        if int(reply[0]) != 1:
            return ClaimResult(fenced_out=True)
        n = len(ops)
        found: dict[int, list[str]] = {}
        extra = reply[1 + n :]
        for index, task_id in zip(extra[::2], extra[1::2], strict=True):
            found.setdefault(int(index) - 1, []).append(str(task_id))
        return ClaimResult(False, [ClaimCode(int(code)) for code in reply[1 : 1 + n]], found)

    # -- runs (overlap policy; called from workers) --------------------------------------

    def run_started(self, name: str, task_id: str, max_runtime_ms: int) -> bool:
        """Record the run ``task_id`` of the entry ``name`` as going for ``max_runtime_ms``
        (Redis time); False if a key of another type is in the way."""
        keys = self.keys
        reply = self.raw.run_started(
            keys=[keys.running(name), keys.running_index, keys.entry(name)],
            args=[task_id, max(int(max_runtime_ms), 1)],
        )
        return bool(int(reply))

    def run_ended(self, name: str, task_id: str) -> bool:
        """Delete the run ``task_id`` of the entry ``name`` (only that run's record);
        True if it was recorded."""
        keys = self.keys
        reply = self.raw.run_ended(
            keys=[keys.running(name), keys.running_index, keys.entry(name)], args=[task_id]
        )
        return bool(int(reply))

    def move(
        self,
        source: str,
        destination: str,
        records: Sequence[Move],
        *,
        token: str | None = None,
        limit: int | None = None,
    ) -> MoveResult:
        """Compare-and-set ``records`` from ``source`` to ``destination`` (may be the same
        HASH: an update in place); ``limit`` bounds the destination's size."""
        args: list[Any] = [token or "", "" if limit is None else limit]
        for record in records:
            args += [record.task_id, record.expected, record.new]
        reply = self.raw.move(keys=[self.keys.lease, source, destination], args=args)
        return _fenced(MoveCode, reply)

    # -- entries -----------------------------------------------------------------------

    @overload
    def upsert(self, call: Upsert) -> UpsertResult: ...

    @overload
    def upsert(self, call: Upsert, *, batch: Batch[UpsertResult]) -> None: ...

    def upsert(
        self, call: Upsert, *, batch: Batch[UpsertResult] | None = None
    ) -> UpsertResult | None:
        """Create or update one entry, versioned; queued on ``batch`` if given."""
        reply = self.raw.upsert(
            keys=[call.entry_key, self.keys.schedule, self.keys.lease, call.owner_set],
            args=[
                call.token or "",
                call.definition,
                _optional(call.expected_version),
                call.score,
                call.new_meta,
                "-" if call.expected_meta is None else call.expected_meta,
                json.dumps(dict(call.fields)) if call.fields else "",
                call.owner_name or "",
            ],
            client=None if batch is None else batch.pipe,
        )
        return None if batch is not None else _upsert_result(reply)

    def upserts(self) -> Batch[UpsertResult]:
        """A pipeline for :meth:`upsert` calls."""
        return Batch(self.client, _upsert_result)

    @overload
    def remove(self, call: Remove) -> RemoveResult: ...

    @overload
    def remove(self, call: Remove, *, batch: Batch[RemoveResult]) -> None: ...

    def remove(
        self, call: Remove, *, batch: Batch[RemoveResult] | None = None
    ) -> RemoveResult | None:
        """Remove one entry and drop its name from its owner sets; queued on ``batch`` if given."""
        reply = self.raw.remove(
            keys=[call.entry_key, self.keys.schedule, self.keys.lease, *call.owner_sets],
            args=[call.token or "", _optional(call.expected_version), call.name],
            client=None if batch is None else batch.pipe,
        )
        return None if batch is not None else _remove_result(reply)

    def removals(self) -> Batch[RemoveResult]:
        """A pipeline for :meth:`remove` calls."""
        return Batch(self.client, _remove_result)

    def run_now(
        self, entry_key: str, *, expected_version: int | None = None, token: str | None = None
    ) -> RunNowResult:
        """Ask the leader to send the entry once at its next tick."""
        code, value = self.raw.run_now(
            keys=[entry_key, self.keys.schedule, self.keys.lease],
            args=[token or "", _optional(expected_version)],
        )
        result = RunNowCode(int(code))
        if result is RunNowCode.REQUESTED:
            return RunNowResult(result, requested_at=int(value))
        if result is RunNowCode.VERSION_CONFLICT:
            return RunNowResult(result, int(value))
        return RunNowResult(result)

    def adopt(self, call: Adopt, *, batch: Batch[bool]) -> None:
        """Queue the copy of one entry into this shard unless it has it (``reshard``)."""
        args: list[str] = [_score_text(call.score)]
        for name, value in call.fields.items():
            args += [name, value]
        self.raw.adopt(keys=[call.entry_key, self.keys.schedule], args=args, client=batch.pipe)

    def adoptions(self) -> Batch[bool]:
        """A pipeline for :meth:`adopt` calls; each reply: True if copied."""
        return Batch(self.client, lambda reply: bool(int(reply)))

    def members(self, set_key: str) -> list[str]:
        """Every member of the SET ``set_key`` (one string reply: ``members.lua``)."""
        count, text = self.raw.members(keys=[set_key])
        names = str(text).split("\n") if int(count) else []
        if len(names) != int(count):  # a member holds "\n": read them one by one
            return [str(name) for name in self.client.smembers(set_key)]
        return names

    def versions(self, entry_keys: Sequence[str]) -> StoredVersions:
        """The stored version of each entry, and a digest of its content, in order."""
        text, odd, digests = self.raw.versions(keys=list(entry_keys))
        stored = {int(i) - 1: str(raw) for i, raw in zip(odd[::2], odd[1::2], strict=True)}
        versions = [
            _stored_version(stored[i]) if token == "?" else _version_token(token)
            for i, token in enumerate(str(text).split())
        ]
        return StoredVersions(versions, str(digests))

    def diff(self, entry_keys: Sequence[str], digests: Sequence[str]) -> dict[int, StoredVersion]:
        """Entries whose content differs from ``digests`` (SHA1 hex, see ``diff.lua``):
        0-based position in ``entry_keys`` -> the version stored now."""
        if len(digests) != len(entry_keys) or any(len(d) != DIGEST_SIZE for d in digests):
            raise ValueError("diff needs one SHA1 hex digest (40 characters) per entry key")
        reply = self.raw.diff(keys=list(entry_keys), args=["".join(digests)])
        return {
            int(position) - 1: _stored_version(str(version))
            for position, version in zip(reply[::2], reply[1::2], strict=True)
        }


#: the size of a content digest (SHA1, hex), as ``versions.lua`` and ``diff.lua`` use them
DIGEST_SIZE = 40
#: ``versions.lua``'s digest of an entry without a definition (no SHA1 looks like it)
NO_DIGEST = "-" * DIGEST_SIZE


def _databases(databases: tuple[int, int] | None) -> list[str]:
    if databases is None or databases[0] == databases[1]:
        return ["", ""]
    return [str(databases[0]), str(databases[1])]


def _overlap_text(overlap: Overlap, running_at: int, index_at: int) -> str:
    """The ``overlap`` value of a ``claim.lua`` operation (see its contract)."""
    if overlap.policy not in ("skip", "replace") or " " in overlap.task_id:
        raise ValueError(f"not an overlap policy claim.lua takes: {overlap!r}")
    return " ".join(
        (
            overlap.policy,
            str(running_at),
            str(index_at),
            str(max(int(overlap.max_runtime_ms), 1)),
            overlap.task_id,
            str(int(overlap.unsent_score)),
            overlap.unsent_state or "-",
        )
    )


def _optional(number: int | None) -> str | int:
    return "" if number is None else number


def _score_text(score: float) -> str:
    return str(int(score)) if float(score).is_integer() else repr(score)


def _fenced(codes: type[C], reply: Any) -> Fenced[C]:
    if int(reply[0]) != 1:
        return Fenced(fenced_out=True)
    return Fenced(False, [codes(int(code)) for code in reply[1:]])


def _upsert_result(reply: Any) -> UpsertResult:
    return _coded(UpsertCode, reply)


def _remove_result(reply: Any) -> RemoveResult:
    return _coded(RemoveCode, reply)


def _coded(codes: type[C], reply: Any) -> Coded[C]:
    code, version = reply
    return Coded(codes(int(code)), None if version is None else int(version))


def _stored_version(text: str) -> StoredVersion:
    if text == "-":
        return StoredVersion(False, None, text)
    if text == "!":
        return StoredVersion(True, None, text, is_hash=False)
    digits = text.isascii() and text.isdigit() and len(text) <= 15
    return StoredVersion(True, int(text) if digits else None, text)


#: :func:`_stored_version` of a ``versions.lua`` token (at most 15 characters): a snapshot
#: of many entries repeats a few versions
_version_token = lru_cache(maxsize=1024)(_stored_version)
