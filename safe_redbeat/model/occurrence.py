"""Occurrences: one entry at one scheduled time, with everything needed to publish it.

An *occurrence* is one entry at one scheduled time: the entry's ZSET score when it was
claimed. Its task id is derived from both (uuid5), so any leader that sends the same
occurrence sends the same id, and a worker-side guard can drop a second copy. Its JSON
form is the pending (and dead-letter) record.

An occurrence of an entry with an overlap policy (``skip``, ``replace``) also carries the
key prefix of its shard and the entry's ``max_runtime``, in its record and its message's
headers: a worker's hook (:mod:`safe_redbeat.worker`) marks the run under that prefix.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import InvalidEntry
from .validation import check_options, check_text

__all__ = [
    "HEADER_ENTRY",
    "HEADER_FENCE",
    "HEADER_MAX_RUNTIME",
    "HEADER_PERIODIC_TASK_NAME",
    "HEADER_PREFIX",
    "HEADER_SCHEDULED",
    "Occurrence",
    "task_id_for",
]

#: Message headers set on every task we send.
HEADER_FENCE = "safe_redbeat_fence"
HEADER_SCHEDULED = "safe_redbeat_scheduled"
HEADER_ENTRY = "safe_redbeat_entry"
#: Set only on messages of entries with an overlap policy: the key prefix of the entry's
#: shard (the run is marked at ``<prefix>:running:<entry>``) and its ``max_runtime``.
HEADER_PREFIX = "safe_redbeat_prefix"
HEADER_MAX_RUNTIME = "safe_redbeat_max_runtime"
#: django-celery-beat's header naming the periodic task (read by django-celery-results)
HEADER_PERIODIC_TASK_NAME = "periodic_task_name"

_TASK_ID_NAMESPACE = uuid.UUID("6f1c1d56-3f43-4a52-9d1e-6a0f2f6b7c15")


def task_id_for(entry_key: str, scheduled: int, kind: str = "") -> str:
    """Deterministic task id of the occurrence of ``entry_key`` scheduled at ``scheduled``.

    ``entry_key`` is the entry's key in the unsharded layout (``Keys.task_key``), so a
    reshard does not change the ids. ``kind`` separates occurrences that are not part of
    the schedule (``"run_now"``).
    """
    return str(uuid.uuid5(_TASK_ID_NAMESPACE, f"{entry_key}\x00{scheduled}{kind}"))


@dataclass(frozen=True)
class Occurrence:
    """A claimed occurrence: everything needed to publish it, now or after a crash."""

    task_id: str
    entry: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    scheduled: int
    fence: int

    #: publish attempts that failed on this message itself (not on the broker)
    attempts: int = 0
    #: the last such failure, one line
    last_error: str = ""
    #: with an overlap policy: the key prefix of the entry's shard, where its run is marked
    prefix: str = ""
    #: with an overlap policy: the entry's ``max_runtime`` (seconds); None: runs untracked
    max_runtime: float | None = None
    #: the record exactly as stored in Redis (compare-and-set needs the stored text)
    raw: str = field(default="", compare=False, repr=False)

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "entry": self.entry,
            "task": self.task,
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "scheduled": self.scheduled,
            "fence": self.fence,
        }
        if self.max_runtime is not None:
            data["prefix"] = self.prefix
            data["max_runtime"] = self.max_runtime
        if self.attempts:
            data["attempts"] = self.attempts
            data["last_error"] = self.last_error
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @property
    def record(self) -> str:
        """The pending record as Redis holds it."""
        return self.raw or self.to_json()

    @classmethod
    def from_json(cls, task_id: str, raw: str) -> Occurrence:
        """Decode a pending or dead-letter record; ValueError naming what is wrong."""
        try:
            check_text(task_id, "task id", task_id)
            check_text(task_id, "record", raw)
            data = json.loads(raw)
        except (ValueError, InvalidEntry) as exc:
            raise ValueError(f"not a JSON record ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        entry, task = data.get("entry"), data.get("task")
        if not isinstance(entry, str) or not isinstance(task, str) or not task:
            raise ValueError("'entry' and 'task' must be strings")
        args, kwargs = data.get("args") or [], data.get("kwargs") or {}
        options = data.get("options") or {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError("'args' must be an array and 'kwargs' an object")
        if not isinstance(options, dict):
            raise ValueError("'options' must be an object")
        try:
            check_options(entry, options)
        except InvalidEntry as exc:
            raise ValueError(str(exc)) from None
        prefix, max_runtime = data.get("prefix", ""), data.get("max_runtime")
        if not isinstance(prefix, str):
            raise ValueError(f"'prefix' must be a string, got {prefix!r}")
        if max_runtime is not None and (
            isinstance(max_runtime, bool)
            or not isinstance(max_runtime, int | float)
            or not max_runtime > 0
        ):
            raise ValueError(f"'max_runtime' must be a positive number, got {max_runtime!r}")
        return cls(
            task_id=task_id,
            entry=entry,
            task=task,
            args=args,
            kwargs=kwargs,
            options=options,
            scheduled=_whole(data, "scheduled"),
            fence=_whole(data, "fence"),
            prefix=prefix,
            max_runtime=max_runtime,
            attempts=_whole(data, "attempts", 0),
            last_error=str(data.get("last_error") or ""),
            raw=raw,
        )

    def failed(self, error: str) -> Occurrence:
        """This occurrence after one more failed publish attempt."""
        return replace(self, attempts=self.attempts + 1, last_error=error, raw="")

    def headers(self, sender_fence: int) -> dict[str, Any]:
        headers: dict[str, Any] = {
            "celery_beat_task": True,
            HEADER_FENCE: sender_fence,
            HEADER_SCHEDULED: self.scheduled,
            HEADER_ENTRY: self.entry,
            HEADER_PERIODIC_TASK_NAME: self.entry,
        }
        if self.max_runtime is not None:
            headers[HEADER_PREFIX] = self.prefix
            headers[HEADER_MAX_RUNTIME] = self.max_runtime
        return headers


def _whole(data: dict[str, Any], name: str, default: int | None = None) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name!r} must be a whole number, got {value!r}")
    return value
