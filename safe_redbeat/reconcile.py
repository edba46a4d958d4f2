"""Reconcile a desired set of entries with Redis: by diff, never by wipe.

Used for static ``beat_schedule`` entries and for the user's loader (the database as the
source of truth). Each source owns the names in one Redis SET; only names a source owns
can be removed by it, and only after a *complete* load. Lease, fence, pending records and
run metadata (``meta``) are never touched; an update keeps ``last_run_at``.

Writes go through ``upsert.lua`` / ``remove.lua``: fenced by the lease token when the
leader reconciles, versioned (compare-and-set on the version read) when any other process
does (``python -m safe_redbeat sync``), so a concurrent ``Schedule.upsert`` is never
overwritten with an older definition.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from celery.utils.log import get_logger

from .connection import sanitize_text
from .entries import decode_meta, encode_meta, next_score_of
from .errors import FencedOut, InvalidEntry
from .keys import Keys
from .scripts import Scripts
from .specs import EntrySpec
from .validation import check_name

__all__ = ["ReconcileResult", "Reconciler"]

logger = get_logger("safe_redbeat.reconcile")

#: Entries read or written per pipeline; the lease is renewed between chunks.
CHUNK = 2000
_MAX_ROUNDS = 5


@dataclass
class ReconcileResult:
    """What one reconcile did (or, with ``dry_run``, would do)."""

    source: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    #: changed by someone else between read and write: left for the next round
    conflicts: list[str] = field(default_factory=list)
    #: problems, each naming the entry; any error makes the round incomplete
    errors: list[str] = field(default_factory=list)
    #: removals the guard held back (more than ``max_removals``): see ``sync --allow-removals``
    held: list[str] = field(default_factory=list)
    #: removals were allowed (the load completed without error)
    complete: bool = True
    dry_run: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        verb = "would " if self.dry_run else ""
        text = (
            f"{self.source}: {verb}create {len(self.created)}, {verb}update "
            f"{len(self.updated)}, {verb}remove {len(self.removed)}, unchanged "
            f"{self.unchanged}, conflicts {len(self.conflicts)}, errors {len(self.errors)}"
            f" in {self.seconds:.2f}s"
        )
        if not self.complete:
            text += " (incomplete load: nothing removed)"
        if self.held:
            text += f"; {len(self.held)} removals held (safe-redbeat sync --allow-removals)"
        return text

    def to_json(self) -> str:
        data = {
            "source": self.source,
            "created": len(self.created),
            "updated": len(self.updated),
            "removed": len(self.removed),
            "unchanged": self.unchanged,
            "conflicts": len(self.conflicts),
            "errors": [sanitize_text(error) for error in self.errors[:20]],
            "complete": self.complete,
            "removals_held": len(self.held),
            "held": self.held[:20],
            "seconds": round(self.seconds, 3),
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return json.dumps(data, separators=(",", ":"))


@dataclass
class _Change:
    spec: EntrySpec
    definition: str
    version: int
    new: bool


class Reconciler:
    """Diff one source's desired entries against Redis and apply the difference."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        scripts: Scripts,
        app: Any,
        *,
        source: str,
        owned_key: str,
    ) -> None:
        self.client = client
        self.keys = keys
        self.scripts = scripts
        self.app = app
        self.source = source
        self.owned_key = owned_key

    def snapshot(self) -> dict[str, int]:
        """The names this source owns and their versions, read *before* loading.

        Pass it to :meth:`run`: an entry whose version moved while the loader read the
        database (an application write-through that raced with it) is then left alone,
        instead of being overwritten with the older row the loader returned; and only names
        owned in the snapshot can be removed, each only at its snapshot version.
        """
        owned = sorted(name for name in self.client.smembers(self.owned_key) if self._entry(name))
        versions: dict[str, int] = {}
        for start in range(0, len(owned), CHUNK):
            chunk = owned[start : start + CHUNK]
            reply = self.scripts.versions(keys=[self.keys.entry(name) for name in chunk])
            for name, version in zip(chunk, reply, strict=True):
                number = 0 if version == "-" else _version(version)
                if number is None:
                    logger.warning(
                        "%s: entry %r has an unreadable version %r; left alone",
                        self.source,
                        name,
                        version,
                    )
                    continue
                versions[name] = number
        return versions

    def _entry(self, name: str) -> bool:
        """Whether an owned name can be an entry's (another program may have added any
        member): a name such as ``:pending`` would make its removal delete an internal key."""
        try:
            check_name(name)
        except InvalidEntry as exc:
            reason = exc.problem
        else:
            if self.keys.entry(name) != self.keys.lease:
                return True
            reason = "its key is the lease key"
        logger.warning(
            "%s: %r in %r is not an entry name (%s); left alone",
            self.source,
            name,
            self.owned_key,
            reason,
        )
        return False

    def run(
        self,
        specs: Iterable[EntrySpec],
        *,
        versions: dict[str, int] | None = None,
        token: str = "",
        complete: bool = True,
        errors: Sequence[str] = (),
        dry_run: bool = False,
        renew: Callable[[], None] | None = None,
        max_removals: int | None = None,
    ) -> ReconcileResult:
        """Apply ``specs``; remove owned names they lack only if ``complete``.

        ``max_removals``: when more owned names would be removed, or ``specs`` is empty,
        none is (``ReconcileResult.held``); None removes any number.

        Entries are compared by the SHA1 of their definition inside Redis (``diff.lua``),
        so an unchanged entry costs no round trip of its own and no write.
        ``versions`` (from :meth:`snapshot`) are the versions expected by each write;
        without it, the version read during the diff. ``token`` fences every write by the
        lease (leader); ``''`` leaves only the version check. Raises FencedOut if Redis
        rejected a fenced write.
        """
        started = time.monotonic()
        result = ReconcileResult(self.source, errors=list(errors), dry_run=dry_run)
        desired = {spec.name: spec for spec in specs}
        result.complete = complete and not result.errors
        if versions is None:
            versions = self.snapshot() if result.complete else {}
            expect_snapshot = False
        else:
            expect_snapshot = True
        owned = set(versions)
        changes: list[_Change] = []
        specs_list = list(desired.values())
        for start in range(0, len(specs_list), CHUNK):
            chunk = specs_list[start : start + CHUNK]
            definitions = [spec.definition() for spec in chunk]
            reply = self.scripts.diff(
                keys=[self.keys.entry(spec.name) for spec in chunk],
                args=[hashlib.sha1(d.encode()).hexdigest() for d in definitions],
            )
            differing = dict(_parse_diff(reply))
            for index, spec in enumerate(chunk):
                if index not in differing and spec.name in owned:
                    result.unchanged += 1
                    continue
                # changed, new, or unchanged but not yet owned by this source (the
                # upsert then only records ownership)
                current = differing.get(index)
                expected = 0 if current in (None, "-") else (_version(current) or 0)
                if index not in differing:
                    expected = -1  # unchanged content: take the version upsert.lua finds
                if expect_snapshot and spec.name in versions:
                    expected = versions[spec.name]
                changes.append(_Change(spec, definitions[index], expected, current == "-"))
            if renew is not None:
                renew()
        removals = sorted(owned - set(desired)) if result.complete else []
        if (
            removals
            and max_removals is not None
            and (len(removals) > max_removals or len(removals) == len(owned))
        ):
            result.held, removals = removals, []
        if dry_run:
            result.created = [c.spec.name for c in changes if c.new]
            result.updated = [c.spec.name for c in changes if not c.new and c.version >= 0]
            result.removed = removals
        else:
            self._apply(changes, token, result, renew)
            self._remove(removals, versions, token, result)
        result.seconds = time.monotonic() - started
        return result

    def _apply(
        self,
        changes: list[_Change],
        token: str,
        result: ReconcileResult,
        renew: Callable[[], None] | None,
    ) -> None:
        pending = changes
        for _round in range(_MAX_ROUNDS):
            if not pending:
                break
            retry: list[_Change] = []
            for start in range(0, len(pending), CHUNK):
                chunk = pending[start : start + CHUNK]
                retry.extend(self._write_chunk(chunk, token, result))
                if renew is not None:
                    renew()
            pending = retry
        result.conflicts.extend(change.spec.name for change in pending)

    def _write_chunk(
        self, chunk: list[_Change], token: str, result: ReconcileResult
    ) -> list[_Change]:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            for change in chunk:
                pipe.hmget(self.keys.entry(change.spec.name), "meta")
            (seconds, micros), *metas = pipe.execute()
        now = datetime.fromtimestamp(seconds + micros / 1e6, tz=timezone.utc)
        with self.client.pipeline(transaction=False) as pipe:
            for change, (meta,) in zip(chunk, metas, strict=True):
                name = change.spec.name
                try:
                    last_run_at, _count = decode_meta(self.keys.entry(name), meta)
                except InvalidEntry:
                    last_run_at = None  # unreadable meta: keep it, schedule from now
                score = next_score_of(change.spec.schedule, last_run_at, now, self.app)
                self._upsert(
                    pipe,
                    name,
                    change.definition,
                    token,
                    "" if change.version < 0 else str(change.version),
                    score,
                    "-" if meta is None else meta,
                    name,
                )
            codes = pipe.execute()
        _check_fenced(codes)
        retry = []
        for change, (code, _version) in zip(chunk, codes, strict=True):
            code = int(code)
            if code == 1:
                (result.created if change.new else result.updated).append(change.spec.name)
            elif code == 2:
                result.unchanged += 1
            elif code == -1:
                result.conflicts.append(change.spec.name)
            elif code == -2:
                retry.append(change)
        return retry

    def _upsert(
        self,
        pipe: Any,
        name: str,
        definition: str,
        token: str,
        expected_version: str,
        score: int,
        expected_meta: str,
        owner_name: str,
    ) -> None:
        self.scripts.upsert(
            keys=[self.keys.entry(name), self.keys.schedule, self.keys.lease, self.owned_key],
            args=[
                token,
                definition,
                expected_version,
                score,
                encode_meta(None),
                expected_meta,
                "",
                owner_name,
            ],
            client=pipe,
        )

    def _remove(
        self, names: list[str], versions: dict[str, int], token: str, result: ReconcileResult
    ) -> None:
        """Remove each name at the version it had in the snapshot (else: a conflict)."""
        for start in range(0, len(names), CHUNK):
            chunk = names[start : start + CHUNK]
            with self.client.pipeline(transaction=False) as pipe:
                for name in chunk:
                    self.scripts.remove(
                        keys=[
                            self.keys.entry(name),
                            self.keys.schedule,
                            self.keys.lease,
                            self.owned_key,
                        ],
                        args=[token, versions[name], name],
                        client=pipe,
                    )
                codes = pipe.execute()
            _check_fenced(codes)
            for name, (code, _version) in zip(chunk, codes, strict=True):
                if int(code) in (1, 2):
                    result.removed.append(name)
                    logger.info("%s: removed entry %r (no longer loaded)", self.source, name)
                elif int(code) == -1:
                    result.conflicts.append(name)


def _check_fenced(replies: Sequence[Sequence[Any]]) -> None:
    """upsert.lua and remove.lua answer ``{0, false}`` when the lease is not ours."""
    if any(int(reply[0]) == 0 for reply in replies):
        raise FencedOut("Redis rejected a reconcile write: the lease is not ours")


def _parse_diff(reply: Sequence[Any]) -> Iterator[tuple[int, str]]:
    """``diff.lua``'s answer as (0-based index, current version or '-')."""
    for position, version in zip(reply[::2], reply[1::2], strict=True):
        yield int(position) - 1, str(version)


def _version(text: str) -> int | None:
    """A stored version as an int; None if it is not one (another program wrote it)."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 15 else None
