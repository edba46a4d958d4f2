"""Backups of the schedule: every entry as JSON, and restoring them next to running replicas.

:func:`export_schedule` reads every entry of every shard as Redis stores it: its
definition, lifetime fields and run history (the hash fields ``definition``,
``lifecycle``, ``meta``, as JSON), its version and its owner (``statics``: from
``beat_schedule``; ``loader``; ``none``: written with ``Schedule``, the CLI or
write-through, the entries nothing writes again after Redis lost its data).

:func:`import_schedule` writes them back through :class:`~safe_redbeat.Schedule`, so every
write is versioned and routed to the entry's shard in the layout Redis holds now (a
backup of 3 shards restores into 1, and the other way round):

* an entry Redis does not hold is created with its run history: its next run is computed
  from its last run, as the leader computes it (a slot that passed meanwhile is the
  catch-up run of ``safe_redbeat_catch_up``), its run count keeps ``max_runs`` and
  one-offs where they were, and its owner is recorded again;
* an entry Redis holds with the same definition and lifetime fields is left alone;
* one that differs is kept as Redis holds it, or with ``replace`` overwritten (a
  versioned update: its run history stays as Redis holds it, which is newer).

Versions start again from 1 for a created entry. Pending manual runs (``run-now``) and the
recorded states (``finished``, ``expired``: the leader records them again from the run
count and lifetime fields) are not part of a backup. The file is not a snapshot of one
instant: each page of entries is read as it is then.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from celery.utils.log import get_logger

from .errors import EntryNotFound, InvalidEntry, Resharding, SafeRedBeatError, VersionConflict
from .model.specs import EntrySpec, info_from_stored
from .schedule import LOADER, STATICS, Schedule
from .store.layout import Layout, settle_layout
from .store.rows import Row, redis_now

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ImportResult",
    "InvalidExport",
    "export_schedule",
    "import_schedule",
]

logger = get_logger("safe_redbeat.backup")

#: ``format`` of an export document, and the version of its layout this code writes/reads
FORMAT = "safe-redbeat-export"
FORMAT_VERSION = 1
#: the owners of an entry in an export
OWNERS = (STATICS, LOADER, "none")
#: attempts for an entry another writer keeps creating and deleting
_ATTEMPTS = 3
#: the hash fields an export keeps, in ``Row.fields`` order positions
_KEPT = {"definition": 0, "meta": 1, "lifecycle": 4}


class InvalidExport(SafeRedBeatError, ValueError):
    """A document that is not an export this version can read; says what is wrong."""


# -- export --------------------------------------------------------------------------------


def export_schedule(schedule: Schedule, *, page_size: int = 500) -> dict[str, Any]:
    """Every entry of ``schedule``'s app as a JSON-ready document (see the module).

    Refused while ``reshard`` moves the schedule (Resharding); a reshard that starts during
    the export makes it fail rather than miss entries.
    """
    layout = _steady(schedule)
    owners = _owners(schedule, layout)
    started = redis_now(schedule.client.time())
    entries: list[dict[str, Any]] = []
    for _shard, rows in schedule.rows(page_size=page_size):
        for row in rows.rows:
            entries.append(_exported(schedule, row, rows.now, owners.get(row.name, "none")))
    if _steady(schedule) != layout:
        raise Resharding("the shard layout changed during the export; export again")
    entries.sort(key=lambda item: item["name"])
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported_at": started.isoformat(),
        "safe_redbeat": _version(),
        "key_prefix": schedule.keys.prefix,
        "layout": {"shards": layout.shards},
        "entries": entries,
    }


def _steady(schedule: Schedule) -> Layout:
    layout = schedule.layout()
    if layout.moving:
        raise Resharding(
            f"the schedule is being resharded ({layout.describe()}); export once "
            "`safe-redbeat reshard` finished"
        )
    return layout


def _owners(schedule: Schedule, layout: Layout) -> dict[str, str]:
    """Entry name -> ``statics`` or ``loader``, over every shard."""
    found: dict[str, str] = {}
    with schedule.client.pipeline(transaction=False) as pipe:
        for keys in layout.all_keys():
            pipe.smembers(keys.loader)
            pipe.smembers(keys.statics)
        replies = pipe.execute()
    for index, names in enumerate(replies):
        owner = LOADER if index % 2 == 0 else STATICS  # statics win: read last
        found.update(dict.fromkeys(map(str, names), owner))
    return found


def _exported(schedule: Schedule, row: Row, now: datetime, owner: str) -> dict[str, Any]:
    item: dict[str, Any] = {"name": row.name, "owner": owner}
    for name, position in _KEPT.items():
        item[name] = _parsed(row.fields[position])
    version = row.fields[2]
    item["version"] = int(version) if str(version or "0").isdigit() else version
    try:
        info = info_from_stored(row.decode(schedule.app), row.score, now)
    except InvalidEntry as exc:
        # kept as stored: `import` reports it, a person can repair the file
        item["problem"] = f"{exc.field}: {exc.problem}"
        return item
    # for the reader only; `import` computes them again
    item.update(
        state=info.state,
        last_run_at=_iso(info.last_run_at) if info.total_run_count else None,
        total_run_count=info.total_run_count,
        next_run_at=_iso(info.next_run_at),
    )
    return item


def _parsed(raw: Any) -> Any:
    """A hash field's JSON as a value; text that is not JSON as it is; None if absent."""
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return str(raw)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def _version() -> str:
    from . import __version__

    return __version__


# -- import --------------------------------------------------------------------------------


@dataclass
class ImportResult:
    """What :func:`import_schedule` did (or, with ``dry_run``, would do), by entry name."""

    created: list[str] = field(default_factory=list)
    #: overwritten (``replace``)
    replaced: list[str] = field(default_factory=list)
    #: Redis holds it with the same definition and lifetime fields
    unchanged: list[str] = field(default_factory=list)
    #: Redis holds it differently, and ``replace`` was not given: left as it is
    kept: list[str] = field(default_factory=list)
    #: one message per entry that could not be imported, naming it
    errors: list[str] = field(default_factory=list)
    dry_run: bool = False
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        would = "would " if self.dry_run else ""
        counts = ", ".join(
            f"{verb} {len(names)}"
            for verb, names in (
                (f"{would}create", self.created),
                (f"{would}replace", self.replaced),
                ("unchanged", self.unchanged),
                ("kept", self.kept),
            )
        )
        return f"import: {counts}, errors {len(self.errors)} ({self.seconds:.2f}s)"


def import_schedule(
    schedule: Schedule,
    document: Any,
    *,
    replace: bool = False,
    dry_run: bool = False,
) -> ImportResult:
    """Restore the entries of an export ``document`` (see the module) into ``schedule``.

    InvalidExport (nothing written) if the document is not an export; an entry that
    cannot be decoded is reported in ``errors`` and the others are imported. Resharding
    while ``reshard`` moves the schedule; Redis errors propagate. On a Redis that holds no
    layout and no schedule yet, the layout ``safe_redbeat_shards`` asks for is stored first
    (as a starting replica does).
    """
    started = time.monotonic()
    items = check_export(document)
    result = ImportResult(dry_run=dry_run)
    if not dry_run:
        settle_layout(schedule.client, schedule.keys, schedule.settings.shards)
    for item in items:
        name = item["name"]
        try:
            spec, runs, owner = _restorable(schedule, item)
            verdict = _import_one(schedule, spec, runs, owner, replace=replace, dry_run=dry_run)
        except Resharding:
            raise  # every write from now on would be refused
        except InvalidEntry as exc:
            result.errors.append(f"entry {name!r}: {exc.field}: {exc.problem}")
            continue
        except NotImported as exc:
            result.errors.append(f"entry {name!r}: {exc}")
            continue
        except SafeRedBeatError as exc:  # changed by other writers on each attempt
            result.errors.append(str(exc))
            continue
        getattr(result, verdict).append(name)
    result.seconds = time.monotonic() - started
    logger.info("backup: %s", result.summary())
    return result


def check_export(document: Any) -> list[Mapping[str, Any]]:
    """The entries of an export document; InvalidExport saying what is wrong."""
    if not isinstance(document, Mapping) or document.get("format") != FORMAT:
        raise InvalidExport(
            f'not a safe-redbeat export: expected a JSON object with "format": "{FORMAT}" '
            "(written by `safe-redbeat export`)"
        )
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise InvalidExport(
            f"export format_version {version!r}: this safe-redbeat reads version "
            f"{FORMAT_VERSION} (a newer file needs a newer safe-redbeat)"
        )
    entries = document.get("entries")
    if not isinstance(entries, list):
        raise InvalidExport('export has no "entries" array')
    names: set[str] = set()
    for index, item in enumerate(entries):
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str) or not name:
            raise InvalidExport(f'entries[{index}] is not an object with a "name" string')
        if name in names:
            raise InvalidExport(f"entries[{index}]: entry {name!r} appears twice")
        names.add(name)
    return list(entries)


def _restorable(schedule: Schedule, item: Mapping[str, Any]) -> tuple[EntrySpec, int, str | None]:
    """The spec, run count and owner of an exported entry; InvalidEntry naming the field."""
    name = item["name"]
    owner = item.get("owner", "none")
    if owner not in OWNERS:
        raise InvalidEntry(name, "owner", f"must be one of {', '.join(OWNERS)}, got {owner!r}")
    fields: list[Any] = [None] * 7
    for field_name, position in _KEPT.items():
        fields[position] = _text(item.get(field_name))
    row = Row(schedule.keys.entry(name), name, None, tuple(fields))
    stored = row.decode(schedule.app)
    spec = info_from_stored(stored, None).spec
    spec = replace(spec, last_run_at=stored.last_run_at).replace()  # validated as a write is
    return spec, stored.total_run_count, None if owner == "none" else owner


def _text(value: Any) -> str | None:
    """A hash field's text from its exported value (JSON, or text that was not JSON)."""
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def _import_one(
    schedule: Schedule,
    spec: EntrySpec,
    runs: int,
    owner: str | None,
    *,
    replace: bool,
    dry_run: bool,
) -> str:
    """Create, replace or leave one entry; which of :class:`ImportResult`'s lists it is."""
    for _attempt in range(_ATTEMPTS):
        if not dry_run:
            try:
                schedule.restore(spec, total_run_count=runs, owner=owner)
                return "created"
            except VersionConflict:
                pass  # Redis holds an entry of that name
        try:
            current = schedule.get(spec.name)
        except EntryNotFound:
            if dry_run:
                return "created"
            continue  # deleted since: create it
        except InvalidEntry as exc:
            raise NotImported(
                f"Redis holds an entry of that name that cannot be decoded ({exc.field}: "
                f"{exc.problem}); delete it (safe-redbeat rm) to import this one"
            ) from None
        if _same(current.spec, spec):
            return "unchanged"
        if not replace:
            return "kept"
        if not dry_run:
            schedule.update(spec.name, lambda _current: spec)
        return "replaced"
    raise NotImported(f"created and deleted by another writer on each of {_ATTEMPTS} attempts")


class NotImported(Exception):
    """One entry that could not be imported: the message says why."""


def _same(one: EntrySpec, other: EntrySpec) -> bool:
    """The same entry as stored: definition JSON and lifetime fields."""
    return one.definition() == other.definition() and one.lifecycle == other.lifecycle
