"""Manage schedule entries at run time, from any process or thread.

:class:`Schedule` is the typed API: ``upsert``, ``get``, ``list``, ``enable``, ``disable``,
``run_now`` and ``delete``; ``runs`` and ``running`` read the runs an overlap policy
tracks. Input is validated before anything is written
(:class:`~safe_redbeat.errors.InvalidEntry`), and every write is one Lua script that
checks ``expected_version`` inside Redis: of two processes updating the same version, one
wins and the other gets :class:`~safe_redbeat.errors.VersionConflict` with nothing written.

Entries stay in RedBeat's format (``docs/storage-format.md``): stock RedBeat reads what this
module writes, and entries saved by stock RedBeat are read here with version 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from celery.utils.log import get_logger
from redbeat.schedulers import REDBEAT_REDIS_KEY

from .errors import EntryNotFound, InvalidEntry, Resharding, SafeRedBeatError, VersionConflict
from .model.lifecycle import state_of
from .model.specs import (
    EntryFields,
    EntryInfo,
    EntrySpec,
    ScheduleLike,
    check_expected_version,
    check_name,
    info_from_stored,
    utc_datetime,
)
from .store.binding import Binding
from .store.keys import Keys
from .store.layout import Layout, read_layout
from .store.rows import EntryRows, Row, Rows, plan_write
from .store.running import Run, read_running, read_runs
from .store.scripts import Remove, Upsert, UpsertCode
from .store.shard import ShardStore

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "EntryInfo",
    "EntrySpec",
    "MalformedEntry",
    "Run",
    "Schedule",
    "ScheduleLike",
    "ShardStore",
]

logger = get_logger("safe_redbeat.schedule")

T = TypeVar("T")

#: the owners an entry's name can be recorded under (``restore``): ``beat_schedule``'s
#: statics SET, the loader's SET
STATICS, LOADER = "statics", "loader"

#: Attempts of one call when Redis keeps changing under it (a claim moving ``meta``, or,
#: without ``expected_version``, another writer). Each attempt is one atomic script.
_MAX_ATTEMPTS = 50


@dataclass(frozen=True)
class MalformedEntry:
    """An entry whose hash cannot be decoded; the leader parks it, nothing deletes it."""

    name: str
    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


@dataclass(frozen=True)
class _EntryKey:
    """Where the entry called ``name`` lives: its shard, and its hash key."""

    shard: ShardStore
    key: str


class _Retired(Exception):
    """A write found its shard retired by ``reshard``: read the layout again."""


# -- the API ---------------------------------------------------------------------------


class Schedule:
    """Typed, versioned management of the entries of one Celery app's RedBeat schedule.

    Bound to ``app``'s RedBeat settings (``redbeat_redis_url``, ``redbeat_redis_options``,
    ``redbeat_key_prefix``). Stateless apart from its Redis client: safe to share between
    threads, and any number of processes may use it next to running beat replicas.
    ``client`` (``decode_responses=True``) replaces the one built from the settings.

    With a sharded layout (``safe_redbeat_shards``) each call finds the entry's shard from
    the layout stored in Redis; while ``reshard`` moves the schedule, writes raise
    :class:`~safe_redbeat.errors.Resharding`.
    """

    def __init__(self, app: Any, *, client: Any = None) -> None:
        self.binding = binding = Binding.of(app, client=client)
        self.app = app
        self.settings = binding.settings
        self.keys = binding.keys
        self._owns_client = client is None
        client = binding.client()
        if self._owns_client:
            shared = getattr(app, REDBEAT_REDIS_KEY, None)  # set by RedBeat's get_redis
            self._owns_client = client is not getattr(shared, "wrapped_connection", shared)
        binding.check_cluster_keys(client)
        self.client: Any = client
        self._shards: dict[str, ShardStore] = {}

    def __repr__(self) -> str:
        return f"<Schedule prefix={self.keys.prefix!r}>"

    def close(self) -> None:
        """Close the Redis connections this object opened (not a client passed in)."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Schedule:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writes ------------------------------------------------------------------------

    def upsert(
        self,
        name: str,
        task: str,
        schedule: ScheduleLike,
        *,
        expected_version: int | None = None,
        **fields: Unpack[EntryFields],
    ) -> EntryInfo:
        """Create or update an entry; return it as written.

        ``expected_version``: None accepts any; ``0`` means "must not exist yet" (or be a
        stock RedBeat entry); otherwise the version read before. A mismatch raises
        VersionConflict and writes nothing. An unchanged definition writes nothing and
        keeps the version. ``last_run_at`` is never reset: a new schedule is due relative
        to the last run.

        A new entry runs at its next slot (an interval one interval from now), or at once
        with ``run_immediately``. The other fields by name (:class:`~safe_redbeat.model.
        specs.EntryFields`): ``args``, ``kwargs``, ``options``, ``enabled``, and the lifetime
        fields: ``start_time`` (no run before it; an interval's first run),
        ``expires`` (no run after it), ``max_runs``; ``tz`` is a crontab's or rrule's IANA
        zone. Naive datetimes are taken in the app's timezone.
        """
        return self._put(EntrySpec.build(name, task, schedule, **fields), expected_version)

    def once(
        self,
        name: str,
        task: str,
        at: datetime,
        *,
        expected_version: int | None = None,
        **fields: Any,
    ) -> EntryInfo:
        """Create or update a one-off entry: sent once at ``at``, then ``finished``; the
        other fields as :meth:`upsert` takes them (``args``, ``kwargs``, ``options``,
        ``enabled``, ``run_immediately``, ``tz`` ...).

        Sent exactly once, also when the leader is killed or replaced mid-dispatch. If
        ``at`` passed more than ``safe_redbeat_catch_up_grace_seconds`` before the entry
        was written, it is not sent (it becomes ``expired``) unless ``run_immediately``.
        """
        return self._put(EntrySpec.once(name, task, at, **fields), expected_version)

    def put(self, spec: EntrySpec, *, expected_version: int | None = None) -> EntryInfo:
        """:meth:`upsert` of a ready :class:`EntrySpec`."""
        # validated again: a spec may be constructed or replaced field by field
        return self._put(spec.replace(), expected_version)

    def restore(
        self, spec: EntrySpec, *, total_run_count: int = 0, owner: str | None = None
    ) -> EntryInfo:
        """Create the entry ``spec`` with the run history it had: its last run
        (``spec.last_run_at``) and ``total_run_count``; its next run is computed from them
        as the leader would. For restoring a backup (``safe_redbeat.backup``).

        Only creates: if an entry of that name exists (in any format), VersionConflict and
        nothing is written. ``owner`` (``"statics"`` or ``"loader"``) records the name as
        ``beat_schedule``'s or the loader's, as it was: their reconcile then updates or
        removes it as before.
        """
        if owner not in (None, STATICS, LOADER):
            raise ValueError(f"owner must be None, {STATICS!r} or {LOADER!r}, got {owner!r}")
        if total_run_count < 0:
            raise InvalidEntry(spec.name, "total_run_count", f"must be >= 0: {total_run_count}")
        spec = spec.replace().in_zone(self.app.timezone)  # validated again
        write = partial(
            self._write, spec=spec, version=0, create=True, runs=total_run_count, owner=owner
        )
        return self._on_shard(spec.name, write)

    def _put(self, spec: EntrySpec, expected_version: int | None) -> EntryInfo:
        check_expected_version(spec.name, expected_version)
        spec = spec.in_zone(self.app.timezone)
        return self._on_shard(spec.name, partial(self._write, spec=spec, version=expected_version))

    def update(
        self,
        name: str,
        change: Callable[[EntryInfo], EntrySpec] | None = None,
        *,
        expected_version: int | None = None,
        **changes: Any,
    ) -> EntryInfo:
        """Change some fields of an entry: ``changes`` are :class:`EntrySpec` fields
        (``enabled=False``, ``options={...}``), or ``change`` builds the new spec from the
        entry as it is now.

        Without ``expected_version`` a concurrent write is not an error: the entry is read
        again and the change applied to its new version. With it, VersionConflict.
        """
        check_expected_version(name, expected_version)
        for _attempt in range(_MAX_ATTEMPTS):
            current = self.get(name)
            if expected_version is not None and expected_version != current.version:
                raise VersionConflict(name, expected_version, current.version)
            spec = current.spec if change is None else change(current)
            new = spec.replace(**changes)  # validated again
            if change is None and _same_entry(new, spec):
                return current  # nothing to change
            spec = new.in_zone(self.app.timezone)
            try:
                return self._on_shard(
                    name, partial(self._write, spec=spec, version=current.version)
                )
            except VersionConflict:
                if expected_version is not None:
                    raise
                # changed by someone else since we read it: read again
        raise SafeRedBeatError(f"entry {name!r} changed on each of {_MAX_ATTEMPTS} attempts")

    def enable(self, name: str, *, expected_version: int | None = None) -> EntryInfo:
        """Enable an entry (a versioned change); its next run is recomputed from its last."""
        return self.update(name, expected_version=expected_version, enabled=True)

    def disable(self, name: str, *, expected_version: int | None = None) -> EntryInfo:
        """Disable an entry (a versioned change); beat skips it until it is enabled."""
        return self.update(name, expected_version=expected_version, enabled=False)

    def run_now(self, name: str, *, expected_version: int | None = None) -> datetime:
        """Have the leader send the entry once at its next tick; return the request time.

        The schedule, ``last_run_at`` and the version stay as they are. Requests made before
        the leader picks one up are sent once. A disabled entry is sent too.
        """
        result = self._versioned(
            name,
            expected_version,
            lambda place: place.shard.scripts.run_now(place.key, expected_version=expected_version),
        )
        requested = datetime.fromtimestamp(_known(result.requested_at), tz=timezone.utc)
        logger.info("schedule: requested a manual run of %r", name)
        return requested

    def delete(self, name: str, *, expected_version: int | None = None) -> int:
        """Remove an entry (definition, run metadata, schedule slot); return its version.

        The name stops being owned by ``beat_schedule`` or the loader. Runs already claimed
        by the leader are still sent.
        """

        def remove(place: _EntryKey) -> Any:
            keys = place.shard.keys
            owners = [keys.statics, keys.loader]
            return place.shard.scripts.remove(Remove(place.key, name, owners, expected_version))

        result = self._versioned(name, expected_version, remove)
        logger.info("schedule: deleted entry %r (version %s)", name, result.version)
        return _known(result.version)

    def _versioned(
        self, name: str, expected_version: int | None, call: Callable[[_EntryKey], Any]
    ) -> Any:
        """``call`` (a versioned script: ``run_now``, ``remove``) on the entry's shard; its
        answer, or EntryNotFound / VersionConflict for what its code says."""
        check_expected_version(name, expected_version)

        def attempt(place: _EntryKey) -> Any:
            found = call(place)
            if found.code.name == "RETIRED":
                raise _Retired
            return found

        result = self._on_shard(name, attempt)
        if result.code.name == "NOT_FOUND":
            raise EntryNotFound(name)
        if result.code.name == "VERSION_CONFLICT":
            raise VersionConflict(name, expected_version, result.version)
        return result

    # -- reads -------------------------------------------------------------------------

    def get(self, name: str) -> EntryInfo:
        """The entry called ``name``; EntryNotFound if there is none, InvalidEntry if its
        hash cannot be decoded."""
        _check_key(name, self.keys)  # before Redis is asked anything
        place = self._place(name, self.layout())
        row, now, wrong_type = place.shard.rows.read_one(place.key)
        if wrong_type or row.definition is None:
            raise EntryNotFound(name)
        return self._info(row, now)

    def runs(self, name: str) -> list[Run]:
        """The runs of the entry ``name`` that count as going (overlap policy ``skip`` or
        ``replace``), oldest first: task id, since when, until when, ``sent`` or
        ``running``. Empty for an entry without a policy, or none going."""
        _check_key(name, self.keys)
        place = self._place(name, self.layout())
        _now, found = read_runs(self.client, place.shard.keys, [name])
        return found[name]

    def running(self, *, limit: int = 10) -> tuple[int, dict[str, list[Run]]]:
        """How many entries have runs going (over every shard), and the runs of up to
        ``limit`` of them, those whose runs stop counting first."""
        total, found = 0, {}
        for shard in self.shards():
            part = read_running(self.client, shard.keys, limit=limit)
            total += part.count
            found.update(part.runs)
        first = sorted(found.items(), key=lambda item: min(run.until for run in item[1]))
        return total, dict(first[:limit])

    def list(self, pattern: str = "*", *, page_size: int = 500) -> Iterator[EntryInfo]:
        """Entries whose name matches the glob ``pattern``, read page by page.

        Walks the schedule ZSET with ZSCAN (never KEYS); entries changed meanwhile may be
        seen in either state. Entries that cannot be decoded are logged and skipped
        (:meth:`scan` yields them too).
        """
        for found in self.scan(pattern, page_size=page_size):
            if isinstance(found, MalformedEntry):
                logger.warning("schedule: skipping undecodable entry %r: %s", found.name, found)
            else:
                yield found

    def scan(
        self, pattern: str = "*", *, page_size: int = 500
    ) -> Iterator[EntryInfo | MalformedEntry]:
        """Like :meth:`list`, with a :class:`MalformedEntry` for each undecodable entry."""
        if page_size < 1:
            raise ValueError(f"page_size must be positive, got {page_size!r}")
        for shard in self.shards():
            yield from self._scan_shard(shard.keys, pattern, page_size)

    def _scan_shard(
        self, keys: Keys, pattern: str, page_size: int
    ) -> Iterator[EntryInfo | MalformedEntry]:
        for rows in self._pages(keys, pattern, page_size):
            for row in rows.rows:
                try:
                    yield self._info(row, rows.now)
                except InvalidEntry as exc:
                    yield MalformedEntry(row.name, exc.field, exc.problem)

    def rows(
        self, pattern: str = "*", *, page_size: int = 500
    ) -> Iterator[tuple[ShardStore, Rows]]:
        """The entry hashes as stored (:class:`~safe_redbeat.store.rows.Row`: raw fields and
        score), page by page, with each page's shard; as :meth:`list` walks them (for
        ``safe_redbeat.backup``). Rows without a definition are left out."""
        if page_size < 1:
            raise ValueError(f"page_size must be positive, got {page_size!r}")
        for shard in self.shards():
            for rows in self._pages(shard.keys, pattern, page_size):
                yield shard, rows

    def _pages(self, keys: Keys, pattern: str, page_size: int) -> Iterator[Rows]:
        """The rows of one shard's schedule members matching ``pattern``, by ZSCAN page."""
        match = keys.match(pattern)
        seen: set[str] = set()
        cursor = 0
        while True:
            cursor, page = self.client.zscan(keys.schedule, cursor, match=match, count=page_size)
            members = [(key, score) for key, score in page if key not in seen]
            seen.update(key for key, _score in members)
            if members:
                rows = EntryRows(self.client, keys, self.app).read(
                    [key for key, _score in members], scores=[score for _key, score in members]
                )
                # deleted meanwhile, another type, or a slot the leader drops: no entry
                found = [row for row in rows.rows if row.definition is not None]
                if found:
                    yield Rows(rows.now, found)
            if int(cursor) == 0:
                return

    # -- shards ------------------------------------------------------------------------

    def layout(self) -> Layout:
        """The shard layout stored in Redis (one GET; absent: one shard, RedBeat's keys)."""
        return read_layout(self.client, self.keys)

    def shards(self, layout: Layout | None = None) -> tuple[ShardStore, ...]:
        """Every shard of ``layout`` (default: the one in use), by index."""
        layout = layout or self.layout()
        return tuple(self._shard(index, keys) for index, keys in enumerate(layout.all_keys()))

    def _shard(self, index: int, keys: Keys) -> ShardStore:
        shard = self._shards.get(keys.prefix)
        if shard is None:
            shard = self._shards[keys.prefix] = ShardStore.of(self.client, self.app, index, keys)
        return shard

    # -- internals ---------------------------------------------------------------------

    def _place(self, name: str, layout: Layout) -> _EntryKey:
        index = layout.shard_of(name)
        keys = layout.keys(index)
        _check_key(name, keys)
        return _EntryKey(self._shard(index, keys), keys.entry(name))

    def _on_shard(self, name: str, write: Callable[[_EntryKey], T]) -> T:
        """``write`` on the entry's shard; read the layout again if a move retired it."""
        _check_key(name, self.keys)  # before Redis is asked anything
        for _attempt in range(3):
            layout = self.layout()
            if layout.moving:
                raise Resharding(
                    f"the schedule is being resharded ({layout.describe()}); {name!r} was "
                    "not written: retry once `safe-redbeat reshard` finished"
                )
            try:
                return write(self._place(name, layout))
            except _Retired:
                continue
        raise Resharding(f"the shard of {name!r} keeps moving; {name!r} was not written")

    def _info(self, row: Row, now: datetime) -> EntryInfo:
        return info_from_stored(row.decode(self.app), row.score, now)

    def _read(self, place: _EntryKey) -> tuple[Row, datetime]:
        row, now, wrong_type = place.shard.rows.read_one(place.key)
        if wrong_type:  # a key that is not an entry
            raise InvalidEntry(
                place.key,
                "key",
                "holds another Redis type, not an entry hash; nothing was written (delete "
                "that key first if it is not needed)",
            )
        return row, now

    def _write(
        self,
        place: _EntryKey,
        *,
        spec: EntrySpec,
        version: int | None,
        create: bool = False,
        runs: int = 0,
        owner: str | None = None,
    ) -> EntryInfo:
        """Write ``spec`` at ``version``; with ``create`` only if no entry of that name
        exists, with ``runs`` as its run count and its name recorded in ``owner``'s SET."""
        key, expected_version = place.key, version
        if runs:
            spec = dataclasses.replace(spec, total_run_count=runs)
        definition = spec.definition()
        fields = {"lifecycle": spec.lifecycle.encode()}
        for _attempt in range(_MAX_ATTEMPTS):
            row, now = self._read(place)
            if create and row.exists:
                raise VersionConflict(spec.name, 0, _stored_version(row))
            plan = plan_write(spec, row.meta, now, key=key, run_now=row.run_now)
            result = place.shard.scripts.upsert(
                Upsert(
                    entry_key=key,
                    owner_set=place.shard.keys.statics,
                    definition=definition,
                    score=plan.score,
                    new_meta=plan.new_meta,
                    expected_meta=row.meta,
                    expected_version=expected_version,
                    fields=fields,
                )
            )
            if result.code is UpsertCode.RETIRED:
                raise _Retired
            code, version = result.code, _known(result.version)
            if code is UpsertCode.META_CHANGED:
                continue  # a claim moved the last run meanwhile: recompute the score
            if code is UpsertCode.VERSION_CONFLICT:
                raise VersionConflict(spec.name, expected_version, version)
            if code is UpsertCode.WRITTEN:
                logger.info("schedule: wrote entry %r (version %s)", spec.name, version)
                next_run = utc_datetime(plan.score)
                if owner is not None:  # only once written: a conflict leaves the sets alone
                    keys = place.shard.keys
                    self.client.sadd(keys.statics if owner == STATICS else keys.loader, spec.name)
            else:
                next_run = utc_datetime(row.score)
            return EntryInfo(
                spec,
                version=version,
                last_run_at=plan.last_run_at,
                next_run_at=next_run,
                total_run_count=plan.total_run_count,
                run_now_at=utc_datetime(int(float(row.run_now))) if row.run_now else None,
                state=state_of(
                    enabled=spec.enabled,
                    lifecycle=spec.lifecycle,
                    stored_state=(row.state or "") if code is UpsertCode.UNCHANGED else "",
                    total_run_count=plan.total_run_count,
                    now=now,
                ),
            )
        raise SafeRedBeatError(
            f"entry {spec.name!r}: its run metadata changed on each of {_MAX_ATTEMPTS} attempts"
        )


def _same_entry(one: EntrySpec, other: EntrySpec) -> bool:
    """The same entry as stored: definition JSON and lifetime fields (schedule objects do
    not compare by value: RedBeat's rrule inherits Celery's ``__eq__``)."""
    return one.definition() == other.definition() and one.lifecycle == other.lifecycle


def _check_key(name: str, keys: Keys) -> None:
    """InvalidEntry unless ``name`` is a valid name whose key in ``keys`` is not internal."""
    key = keys.entry(check_name(name))
    if key in (keys.lease, keys.schedule, keys.statics, keys.fence, keys.pending, keys.layout):
        raise InvalidEntry(name, "name", f"its key {key!r} is an internal key")


def _stored_version(row: Row) -> int | None:
    """The version a row holds (0: a stock RedBeat entry; None if it is not a number)."""
    raw = row.fields[2]
    try:
        return int(raw or 0)
    except ValueError:
        return None


def _known(value: int | None) -> int:
    """A number the script's contract promises for this reply code."""
    if value is None:
        raise SafeRedBeatError("Redis answered a script call without the expected number")
    return value
