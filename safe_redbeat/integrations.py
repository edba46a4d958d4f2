"""Celery beat's per-entry hooks, kept working under batched dispatch.

Monitoring tools hook Celery beat by patching ``celery.beat.Scheduler.apply_entry`` or
RedBeat's ``RedBeatScheduler.apply_async`` (Sentry's ``CeleryIntegration(
monitor_beat_tasks=True)`` patches both): the patched function adds headers to
``entry.options["headers"]`` and records a check-in before the original sends the task.
SafeRedBeatScheduler publishes claimed occurrences in broker batches and calls neither,
so such a tool would go silent.

:func:`prepare` restores the hook. When (and only when) one of those functions is patched,
each occurrence passes, as a :class:`celery.beat.ScheduleEntry` with its schedule, through
the patched function, called on a stand-in scheduler whose ``apply_async`` and
``send_task`` only record the entry's options. The options the hook produced (headers
included) are then published with the occurrence's deterministic task id. Nothing is sent
twice, and when nothing is patched the occurrences pass through untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from types import SimpleNamespace
from typing import Any

from celery.beat import ScheduleEntry, Scheduler
from celery.utils.log import get_logger
from redbeat.schedulers import RedBeatScheduler

from .dispatch import Occurrence
from .entries import decode_entry
from .errors import InvalidEntry
from .keys import Keys

__all__ = ["patched_hook", "prepare"]

logger = get_logger("safe_redbeat.integrations")


def _patched(func: Any, module: str) -> bool:
    return getattr(func, "__module__", module) != module or hasattr(func, "__wrapped__")


def patched_hook() -> Callable[[Any, Any], Any] | None:
    """The patched beat function to pass entries through, or None if nothing is patched.

    Celery's ``apply_entry`` is preferred; RedBeat's ``apply_async`` (which RedBeat does
    not define itself) is used when only it is patched. Never both: a tool patching both
    would record two check-ins per occurrence.
    """
    apply_entry = Scheduler.apply_entry
    if _patched(apply_entry, "celery.beat"):
        return lambda scheduler, entry: apply_entry(scheduler, entry)
    apply_async = RedBeatScheduler.__dict__.get("apply_async")
    if apply_async is not None and apply_async is not Scheduler.__dict__.get("apply_async"):
        return lambda scheduler, entry: apply_async(scheduler, entry, advance=False)
    return None


class _Tasks(dict):  # type: ignore[type-arg]
    """No task is "registered": the original ``apply_async`` falls back to send_task."""


class _AppView:
    """The scheduler's app, with an empty task registry (the hook must not send)."""

    tasks = _Tasks()

    def __init__(self, app: Any) -> None:
        self._app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app, name)


class _Recorder:
    """Stands in for the scheduler in the hook: records options instead of sending."""

    def __init__(self, app: Any) -> None:
        self.app = _AppView(app)
        self.options: dict[str, Any] | None = None

    def apply_async(self, entry: Any, *args: Any, **kwargs: Any) -> Any:
        self.options = dict(entry.options)
        return _NOT_SENT  # Celery < 5.4's apply_entry logs the result's id

    def reserve(self, entry: Any) -> Any:
        return entry  # the occurrence is already claimed

    def send_task(self, *args: Any, **options: Any) -> Any:
        options.pop("producer", None)
        self.options = options
        return _NOT_SENT


#: What the recorder answers for "the sent task": it has an id, and sends nothing.
_NOT_SENT = SimpleNamespace(id="(sent by safe_redbeat)")


def prepare(
    app: Any, client: Any, keys: Keys, occurrences: Sequence[Occurrence]
) -> Sequence[Occurrence]:
    """Pass each occurrence through the patched beat hook, if any; else return them as is.

    ``client`` and ``keys`` read the entries' schedules (one pipeline), which hooks need.
    """
    hook = patched_hook()
    if hook is None or not occurrences:
        return occurrences
    schedules = _schedules(app, client, keys, occurrences)
    prepared = []
    for occurrence in occurrences:
        schedule = schedules.get(occurrence.entry)
        if schedule is None:
            prepared.append(occurrence)
            continue
        entry = ScheduleEntry(
            name=occurrence.entry,
            task=occurrence.task,
            schedule=schedule,
            args=tuple(occurrence.args),
            kwargs=dict(occurrence.kwargs),
            options=dict(occurrence.options),
            app=app,
        )
        recorder = _Recorder(app)
        try:
            hook(recorder, entry)
        except Exception:
            logger.exception("beat: a beat hook failed for %r; sent without it", occurrence.entry)
            prepared.append(occurrence)
            continue
        options = recorder.options if recorder.options is not None else entry.options
        prepared.append(_Hooked.of(occurrence, dict(options)))
    return prepared


@dataclass(frozen=True)
class _Hooked(Occurrence):
    """An occurrence published with the options a hook produced.

    Its pending record stays the one Redis holds: a failed attempt is counted on the
    original (the hook's headers, a check-in id say, are never stored).
    """

    original: Occurrence | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, occurrence: Occurrence, options: dict[str, Any]) -> _Hooked:
        values = {f.name: getattr(occurrence, f.name) for f in fields(Occurrence)}
        return cls(**{**values, "options": options, "original": occurrence})

    @property
    def record(self) -> str:
        return self.original.record if self.original is not None else super().record

    def failed(self, error: str) -> Occurrence:
        return self.original.failed(error) if self.original is not None else super().failed(error)


def _schedules(
    app: Any, client: Any, keys: Keys, occurrences: Sequence[Occurrence]
) -> dict[str, Any]:
    """Each entry's schedule object, read in one pipeline (hooks need it, e.g. Sentry)."""
    names = sorted({o.entry for o in occurrences})
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hget(keys.entry(name), "definition")
        # a key of another type answers WRONGTYPE: that entry has no schedule to give
        definitions = pipe.execute(raise_on_error=False)
    schedules: dict[str, Any] = {}
    for name, definition in zip(names, definitions, strict=True):
        if isinstance(definition, Exception):
            continue
        try:
            stored = decode_entry(keys.entry(name), name, 0.0, definition, None, None, app=app)
        except InvalidEntry:
            continue
        schedules[name] = stored.schedule
    return schedules
