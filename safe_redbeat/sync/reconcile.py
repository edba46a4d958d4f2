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

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timezone
from hashlib import sha1
from typing import Any

from celery.utils.log import get_logger

from ..errors import FencedOut, InvalidEntry, Resharding
from ..model.specs import EntrySpec
from ..model.validation import check_name
from ..store.connection import sanitize_text
from ..store.keys import Keys
from ..store.rows import EntryRows, plan_write
from ..store.scripts import DIGEST_SIZE, Remove, RemoveCode, Scripts, Upsert, UpsertCode

__all__ = ["ReconcileResult", "Reconciler", "Snapshot", "removals_held"]

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
    #: entries the source named but could not schedule, by name: the problem. Skipped and
    #: kept in Redis as they were; they do not make the round incomplete
    rejected: dict[str, str] = field(default_factory=dict)
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
        if self.rejected:
            names = ", ".join(repr(name) for name in sorted(self.rejected)[:5])
            more = ", ..." if len(self.rejected) > 5 else ""
            text += f"; {len(self.rejected)} not schedulable, skipped ({names}{more})"
        if not self.complete:
            text += " (incomplete load: nothing removed)"
        if self.held:
            text += f"; {len(self.held)} removals held (safe-redbeat sync --allow-removals)"
        return text

    @classmethod
    def merged(cls, results: Sequence[ReconcileResult]) -> ReconcileResult:
        """One result for a reconcile done shard by shard (errors said once)."""
        total = cls(results[0].source, dry_run=results[0].dry_run)
        for part in results:
            total.created += part.created
            total.updated += part.updated
            total.removed += part.removed
            total.unchanged += part.unchanged
            total.conflicts += part.conflicts
            total.errors += [error for error in part.errors if error not in total.errors]
            total.held += part.held
            total.rejected.update(part.rejected)
            total.complete = total.complete and part.complete
            total.seconds += part.seconds
        return total

    def to_json(self) -> str:
        data = {
            "source": self.source,
            "created": len(self.created),
            "updated": len(self.updated),
            "removed": len(self.removed),
            "unchanged": self.unchanged,
            "conflicts": len(self.conflicts),
            # rejected entries are listed with the errors (by name), but leave it complete
            "errors": [
                sanitize_text(error)
                for error in [*self.errors, *(self.rejected[n] for n in sorted(self.rejected))][:20]
            ],
            "rejected": sorted(self.rejected)[:20],
            "complete": self.complete,
            "removals_held": len(self.held),
            "held": self.held[:20],
            "seconds": round(self.seconds, 3),
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return json.dumps(data, separators=(",", ":"))


class Snapshot(dict[str, int]):
    """The names a source owns and their versions (:meth:`Reconciler.snapshot`), and the
    content digest of each, read in the same script call."""

    def __init__(self) -> None:
        super().__init__()
        #: name -> SHA1 (hex) of the entry's content, as ``diff.lua`` compares it
        self.digests: dict[str, str] = {}


@dataclass
class _Change:
    spec: EntrySpec
    definition: str
    #: the version the write expects; None: any (content unchanged, only ownership)
    version: int | None
    new: bool


@dataclass(eq=False)
class Reconciler:
    """Diff one source's desired entries against Redis and apply the difference."""

    client: Any
    keys: Keys
    scripts: Scripts
    app: Any
    _: KW_ONLY
    source: str
    owned_key: str

    def snapshot(self) -> Snapshot:
        """The names this source owns and their versions, read *before* loading.

        Pass it to :meth:`run`: an entry whose version moved while the loader read the
        database (an application write-through that raced with it) is then left alone,
        instead of being overwritten with the older row the loader returned; and only names
        owned in the snapshot can be removed, each only at its snapshot version. The
        snapshot also holds each entry's content digest: a loaded entry whose digest
        equals it is unchanged, without another read.
        """
        # sorted: entries are read in the order a loader usually created them
        owned = sorted(name for name in self.scripts.members(self.owned_key) if self._entry(name))
        snapshot = Snapshot()
        digests = snapshot.digests
        entry_key = self.keys.entry
        for start in range(0, len(owned), CHUNK):
            chunk = owned[start : start + CHUNK]
            stored = self.scripts.versions([entry_key(name) for name in chunk])
            text = stored.digests
            for at, (name, version) in enumerate(zip(chunk, stored.versions, strict=True)):
                number = version.number if version.exists else 0
                if number is None:
                    logger.warning(
                        "%s: entry %r has an unreadable version %r; left alone",
                        self.source,
                        name,
                        version.raw,
                    )
                    continue
                snapshot[name] = number
                digests[name] = text[DIGEST_SIZE * at : DIGEST_SIZE * at + DIGEST_SIZE]
        return snapshot

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
        rejected: Mapping[str, str] | None = None,
        dry_run: bool = False,
        renew: Callable[[], None] | None = None,
        max_removals: int | None = None,
        hold_removals: bool | None = None,
    ) -> ReconcileResult:
        """Apply ``specs``; remove owned names they lack only if ``complete``.

        ``rejected``: names the source has but could not schedule (name: problem); their
        entries are left as they are, never removed, and the round stays complete.

        ``max_removals``: when more owned names would be removed, or ``specs`` is empty,
        none is (``ReconcileResult.held``); None removes any number. ``hold_removals``
        overrides that with the caller's verdict over the whole schedule (a sharded
        schedule reconciles shard by shard, the guard counts every shard:
        :func:`removals_held`).

        Entries are compared by the SHA1 of their content (definition and lifetime
        fields): with the digests of a :class:`Snapshot`, here, and each entry the
        snapshot does not hold with the same digest once more inside Redis (``diff.lua``),
        so an unchanged entry costs no round trip of its own and no write. An entry
        written after the snapshot is left alone, as a write would be refused.
        ``versions`` (from :meth:`snapshot`) are the versions expected by each write;
        without it, the version read during the diff. ``token`` fences every write by the
        lease (leader); ``''`` leaves only the version check. Raises FencedOut if Redis
        rejected a fenced write.
        """
        started = time.monotonic()
        result = ReconcileResult(
            self.source, errors=list(errors), rejected=dict(rejected or {}), dry_run=dry_run
        )
        zone = self.app.timezone
        desired = {spec.name: spec.in_zone(zone) for spec in specs}
        result.complete = complete and not result.errors
        if versions is None:
            versions = self.snapshot() if result.complete else {}
            expect_snapshot = False
        else:
            expect_snapshot = True
        owned = set(versions)
        changes: list[_Change] = []
        unsure = self._unchanged_in(versions, list(desired.values()), result, renew)
        for start in range(0, len(unsure), CHUNK):
            part = unsure[start : start + CHUNK]
            chunk = [spec for spec, _, _ in part]
            definitions = [definition for _, definition, _ in part]
            differing = self.scripts.diff(
                [self.keys.entry(spec.name) for spec in chunk], [digest for _, _, digest in part]
            )
            for index, spec in enumerate(chunk):
                if index not in differing and spec.name in owned:
                    result.unchanged += 1
                    continue
                # changed, new, or unchanged but not yet owned by this source (the
                # upsert then only records ownership)
                current = differing.get(index)
                if current is not None and not current.is_hash:
                    result.errors.append(
                        f"entry {spec.name!r}: its key {self.keys.entry(spec.name)!r} holds "
                        "another Redis type, not an entry hash; left alone (delete that key "
                        "and the next reconcile writes the entry)"
                    )
                    continue
                expected: int | None = 0
                if current is None:
                    expected = None  # unchanged content: take the version upsert.lua finds
                elif current.exists:
                    expected = current.number or 0
                if expect_snapshot and spec.name in versions:
                    expected = versions[spec.name]
                new = current is not None and not current.exists
                changes.append(_Change(spec, definitions[index], expected, new))
            if renew is not None:
                renew()
        kept = set(desired) | set(result.rejected)
        removals = sorted(owned - kept) if result.complete else []
        if hold_removals is None:
            hold_removals = removals_held(len(removals), len(owned), max_removals)
        if removals and hold_removals:
            result.held, removals = removals, []
        if dry_run:
            result.created = [c.spec.name for c in changes if c.new]
            result.updated = [c.spec.name for c in changes if not c.new and c.version is not None]
            result.removed = removals
        else:
            self._apply(changes, token, result, renew)
            self._remove(removals, versions, token, result)
        result.seconds = time.monotonic() - started
        return result

    def _unchanged_in(
        self,
        versions: dict[str, int],
        specs: list[EntrySpec],
        result: ReconcileResult,
        renew: Callable[[], None] | None,
    ) -> list[tuple[EntrySpec, str, str]]:
        """Count the specs whose digest equals their snapshot's (unchanged, owned); the
        others, with their definition and digest, are for ``diff.lua``."""
        known = versions.digests if isinstance(versions, Snapshot) else {}
        unsure = []
        for start in range(0, len(specs), CHUNK):
            unchanged = 0
            for spec in specs[start : start + CHUNK]:
                definition = spec.definition()
                digest = _digest(definition, spec)
                if known.get(spec.name) == digest:
                    unchanged += 1
                else:
                    unsure.append((spec, definition, digest))
            result.unchanged += unchanged
            if renew is not None:
                renew()
        return unsure

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
        entry_keys = [self.keys.entry(change.spec.name) for change in chunk]
        now, metas = EntryRows(self.client, self.keys, self.app).metas(entry_keys)
        batch = self.scripts.upserts()
        for change, key, meta in zip(chunk, entry_keys, metas, strict=True):
            spec, name = change.spec, change.spec.name
            plan = plan_write(spec, meta, now, key=key)
            self.scripts.upsert(
                Upsert(
                    entry_key=key,
                    owner_set=self.owned_key,
                    definition=change.definition,
                    score=plan.score,
                    new_meta=plan.new_meta,
                    expected_meta=meta,
                    expected_version=change.version,
                    fields={"lifecycle": spec.lifecycle.encode()},
                    owner_name=name,
                    token=token,
                ),
                batch=batch,
            )
        replies = batch.execute()
        if any(reply.code is UpsertCode.FENCED_OUT for reply in replies):
            raise FencedOut("Redis rejected a reconcile write: the lease is not ours")
        if any(reply.code is UpsertCode.RETIRED for reply in replies):
            raise Resharding("the shard was resharded away during the reconcile; run it again")
        retry = []
        for change, reply in zip(chunk, replies, strict=True):
            if reply.code is UpsertCode.WRITTEN:
                (result.created if change.new else result.updated).append(change.spec.name)
            elif reply.code is UpsertCode.UNCHANGED:
                result.unchanged += 1
            elif reply.code is UpsertCode.VERSION_CONFLICT:
                result.conflicts.append(change.spec.name)
            elif reply.code is UpsertCode.META_CHANGED:
                retry.append(change)
        return retry

    def _remove(
        self, names: list[str], versions: dict[str, int], token: str, result: ReconcileResult
    ) -> None:
        """Remove each name at the version it had in the snapshot (else: a conflict)."""
        for start in range(0, len(names), CHUNK):
            chunk = names[start : start + CHUNK]
            batch = self.scripts.removals()
            for name in chunk:
                call = Remove(self.keys.entry(name), name, [self.owned_key], versions[name], token)
                self.scripts.remove(call, batch=batch)
            replies = batch.execute()
            if any(reply.code is RemoveCode.FENCED_OUT for reply in replies):
                raise FencedOut("Redis rejected a reconcile write: the lease is not ours")
            if any(reply.code is RemoveCode.RETIRED for reply in replies):
                raise Resharding("the shard was resharded away during the reconcile; run it again")
            for name, reply in zip(chunk, replies, strict=True):
                if reply.code in (RemoveCode.REMOVED, RemoveCode.NOT_FOUND):
                    result.removed.append(name)
                    logger.info("%s: removed entry %r (no longer loaded)", self.source, name)
                elif reply.code is RemoveCode.VERSION_CONFLICT:
                    result.conflicts.append(name)


def removals_held(removing: int, owned: int, max_removals: int | None) -> bool:
    """The removal guard: hold a load's removals when it would remove more than
    ``max_removals`` of the ``owned`` entries, or all of them. None: no limit."""
    return (
        removing > 0 and max_removals is not None and (removing > max_removals or removing == owned)
    )


def _digest(definition: str, spec: EntrySpec) -> str:
    """SHA1 of what ``diff.lua`` compares: the definition, plus the lifecycle field if set."""
    lifecycle = spec.lifecycle.encode()
    content = definition + "\n" + lifecycle if lifecycle else definition
    return sha1(content.encode()).hexdigest()
