"""The user's loader hook: desired entries from the source of truth (usually a database).

``safe_redbeat_loader = "myproj.schedules:load"`` names a callable that takes the Celery
app and returns an iterable of entries, each an :class:`~safe_redbeat.EntrySpec` or a
mapping with ``name``, ``task``, ``schedule`` and optionally ``args``, ``kwargs``,
``options``, ``enabled``, the lifetime fields ``start_time``, ``expires``, ``max_runs``,
``tz``, ``run_immediately``, and ``last_run_at`` and ``total_run_count`` (the source's run
history, used only when Redis has none for the entry). A one-off gives ``at`` (a
datetime) instead of ``schedule``. Naive datetimes are taken in the app's timezone. A
loader that raises, times out or returns garbage yields an *incomplete* load: good
entries are still applied, nothing is removed.
An item that names an entry but cannot be scheduled (a bad crontab field, an unknown
field, arguments that are not JSON) is *rejected*: reported by name and skipped, its entry
in Redis kept as it is; the other items, and removals, apply as usual.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery.utils.imports import symbol_by_name

from ..errors import InvalidEntry
from ..model.lifecycle import LIFETIME_FIELDS
from ..model.specs import EntrySpec
from ..model.validation import check_name

__all__ = [
    "Load",
    "LoaderBusy",
    "LoaderError",
    "LoaderSlot",
    "call_loader",
    "item_spec",
    "parse_specs",
]

SPEC_FIELDS = frozenset({"name", "task", "schedule", "args", "kwargs", "options", "enabled"})
#: What a loader item (a mapping) may carry: the definition, the lifetime fields (``at``:
#: a one-off) and the source's run history (``last_run_at``, ``total_run_count``).
ITEM_FIELDS = SPEC_FIELDS | frozenset(LIFETIME_FIELDS) | {"last_run_at", "total_run_count"}


class LoaderError(Exception):
    """The loader could not be imported, raised, timed out, or returned no iterable."""


class LoaderBusy(LoaderError):
    """The previous call of the loader has not returned yet (it hangs)."""


class LoaderSlot:
    """At most one call of the loader in flight: while an abandoned call has not returned,
    no other is started (a hung database would otherwise collect a thread per round)."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None

    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


@dataclass
class Load:
    """The outcome of one call of the loader."""

    specs: list[EntrySpec] = field(default_factory=list)
    #: problems that make the load incomplete (nothing is removed): no usable name, or a
    #: name returned twice
    errors: list[str] = field(default_factory=list)
    #: items that name an entry but cannot be scheduled, by name: the problem. Skipped
    #: (Redis keeps what it has for them); they do not make the load incomplete
    rejected: dict[str, str] = field(default_factory=dict)
    #: rows named like a ``beat_schedule`` entry (or Celery's own): the static one is kept
    shadowed: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.errors


def resolve(path: str) -> Callable[[Any], Any]:
    """Import ``module:attribute`` (or ``module.attribute``); LoaderError if impossible."""
    try:
        loader = symbol_by_name(path)
    except (ImportError, AttributeError, ValueError) as exc:
        raise LoaderError(
            f"safe_redbeat_loader = {path!r} cannot be imported: {exc}. "
            "Set it to 'package.module:function'."
        ) from None
    if not callable(loader):
        raise LoaderError(f"safe_redbeat_loader = {path!r} is not callable")
    return loader  # type: ignore[no-any-return]


def call_loader(
    loader: Callable[[Any], Any],
    app: Any,
    *,
    timeout: float,
    wait_step: float,
    on_wait: Callable[[], None] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    slot: LoaderSlot | None = None,
) -> list[Any]:
    """Call ``loader(app)`` in a daemon thread and materialise its result as a list.

    Waits in steps of ``wait_step`` seconds, calling ``on_wait`` between them (the leader
    renews its lease there), up to ``timeout``. Raises LoaderError on error or timeout;
    a loader that hangs is abandoned, never joined. With ``slot``, raises LoaderBusy
    instead of calling while the slot's previous call is still running.
    """
    if slot is not None and slot.busy():
        raise LoaderBusy("the previous loader call has not returned yet; this round is skipped")
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            result = loader(app)
            if (
                result is None
                or isinstance(result, str | bytes | Mapping)
                or not isinstance(result, Iterable)
            ):
                raise LoaderError(
                    f"the loader returned {type(result).__name__}, not an iterable of entries"
                )
            box["items"] = list(result)
        except BaseException as exc:  # reported to the caller, never lost in the thread
            box["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=target, name="safe-redbeat-loader", daemon=True)
    deadline = monotonic() + timeout
    thread.start()
    if slot is not None:
        slot.thread = thread
    while not done.wait(max(min(wait_step, deadline - monotonic()), 0.0)):
        if monotonic() >= deadline:
            raise LoaderError(f"the loader did not return within {timeout}s")
        if on_wait is not None:
            on_wait()
    error = box.get("error")
    if isinstance(error, LoaderError):
        raise error
    if error is not None:
        raise LoaderError(f"the loader raised {type(error).__name__}: {error}") from error
    items: list[Any] = box["items"]
    return items


def parse_specs(items: Iterable[Any], *, reserved: Iterable[str] = ()) -> Load:
    """Turn loader items into EntrySpecs; each bad item is reported naming it.

    An item with a valid name that cannot be scheduled is listed in ``Load.rejected``;
    one without a usable name, or a name returned twice, is an error (an incomplete load).

    An item named in ``reserved`` (the static entries, :func:`.seeding.static_names`) is
    left out and listed in ``Load.shadowed``: the static entry is kept. That is no error,
    so it does not make the load incomplete (DatabaseScheduler writes Celery's
    ``celery.backend_cleanup`` into django-celery-beat's table, for one).
    """
    load = Load()
    seen: set[str] = set()
    reserved_names = set(reserved)
    for index, item in enumerate(items):
        try:
            spec = _to_spec(item, index)
        except InvalidEntry as exc:
            name = _valid_name(item)
            if name is None or name in load.rejected or name in seen:
                load.errors.append(str(exc))
            else:
                load.rejected[name] = str(exc)
            continue
        if spec.name in load.rejected:
            load.errors.append(f"entry {spec.name!r}: returned more than once; first kept")
            continue
        if spec.name in seen:
            load.errors.append(f"entry {spec.name!r}: returned more than once; first kept")
            continue
        if spec.name in reserved_names:
            load.shadowed.append(spec.name)  # not an error: what to do is known
            continue
        seen.add(spec.name)
        load.specs.append(spec)
    return load


def _valid_name(item: Any) -> str | None:
    """The item's entry name if it is a valid one (its entry can be kept), else None."""
    name = item.get("name") if isinstance(item, Mapping) else getattr(item, "name", None)
    try:
        return check_name(name)
    except InvalidEntry:
        return None


def _label(item: Any, index: int) -> str:
    name = getattr(item, "name", None)
    if name is None and isinstance(item, Mapping):
        name = item.get("name")
    return str(name) if name else f"#{index}"


def item_spec(item: Any) -> EntrySpec:
    """One loader item as an EntrySpec; InvalidEntry naming the entry and the field."""
    return _to_spec(item, 0)


def _to_spec(item: Any, index: int) -> EntrySpec:
    if isinstance(item, EntrySpec):
        return item.replace()  # validated: it may have been constructed field by field
    if type(item) is not dict and not isinstance(item, Mapping):  # no ABC check for a dict
        raise InvalidEntry(
            _label(item, index),
            "item",
            f"must be an EntrySpec or a mapping, got {type(item).__name__}",
        )
    fields = item.keys()
    extra = fields - SPEC_FIELDS  # lifetime fields, last_run_at, or unknown ones
    unknown = extra - ITEM_FIELDS if extra else extra
    if unknown:
        raise InvalidEntry(_label(item, index), "item", f"unknown fields {sorted(unknown)}")
    if "name" not in item or "task" not in item or ("schedule" not in item and "at" not in item):
        missing = {"name", "task", "at" if "at" in item else "schedule"} - fields
        raise InvalidEntry(_label(item, index), "item", f"missing fields {sorted(missing)}")
    return EntrySpec.build(
        name=item["name"],
        task=item["task"],
        schedule=item.get("schedule"),
        args=item.get("args") or (),
        kwargs=item.get("kwargs"),
        options=item.get("options"),
        enabled=item.get("enabled", True),
        **{key: item[key] for key in extra},
    )
