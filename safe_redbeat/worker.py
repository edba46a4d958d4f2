"""The worker's side of the overlap policy: it tells the schedule which runs are going.

An entry with ``overlap="skip"`` or ``"replace"`` needs to know whether its previous run
still goes. The leader records each occurrence it sends as going (``claim.lua``); this
hook, in the workers, records when a run starts and deletes the record when it ends. One
line in the module that defines the Celery app, for workers::

    from safe_redbeat.worker import track_runs

    track_runs(app)

What it does, through Celery's task signals, only for messages beat sent for an entry
with a policy (they carry the headers ``safe_redbeat_prefix``, ``safe_redbeat_max_runtime``
and ``safe_redbeat_entry``; a call of the same task from anywhere else carries none):

* ``task_prerun`` (the run starts, a retry too): the run counts as going for
  ``max_runtime`` from now;
* ``task_postrun`` in any state but ``RETRY`` (success, failure, retries exhausted,
  ``Ignore``, ``Reject``), ``task_revoked`` (revoked before or while running, expired),
  ``task_failure`` of a lost child process or a hard time limit, ``task_rejected`` and
  ``task_unknown``: its record is deleted, and only its own (another run's is left).

A worker killed outright (SIGKILL, OOM, node lost) reports nothing: its run stops
counting ``max_runtime`` after it started. Redis errors are logged (a WARNING at most
once a minute per process) and never fail a task; the record then expires the same way.
The hook talks to the schedule's Redis (``redbeat_redis_url``, with
``safe_redbeat_socket_timeout``) and writes only below the app's ``redbeat_key_prefix``.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

from celery import signals as celery_signals
from celery import states
from celery.exceptions import TimeLimitExceeded, WorkerLostError
from celery.utils.log import get_logger

from .model.occurrence import HEADER_ENTRY, HEADER_MAX_RUNTIME, HEADER_PREFIX
from .model.validation import check_name
from .store.binding import Binding
from .store.connection import CLIENT_ERRORS, sanitize_text
from .store.keys import Keys
from .store.layout import is_prefix_of
from .store.scripts import Scripts

__all__ = ["RunTracker", "track_runs"]

logger = get_logger("safe_redbeat.worker")

#: Seconds between two WARNINGs about Redis errors, per process.
WARN_EVERY = 60.0

_trackers: dict[int, RunTracker] = {}
_trackers_lock = threading.Lock()


def track_runs(app: Any) -> RunTracker:
    """Record the runs of entries with an overlap policy in ``app``'s workers (once per
    app; later calls return the same tracker). ConfigurationError if ``app``'s
    safe_redbeat settings are invalid."""
    with _trackers_lock:
        tracker = _trackers.get(id(app))
        if tracker is None:
            tracker = RunTracker(app)
            tracker.connect()
            _trackers[id(app)] = tracker
        return tracker


class Run:
    """One message's run as the headers describe it."""

    __slots__ = ("entry", "max_runtime_ms", "prefix", "task_id")

    def __init__(self, task_id: str, prefix: str, entry: str, max_runtime_ms: int) -> None:
        self.task_id = task_id
        self.prefix = prefix
        self.entry = entry
        self.max_runtime_ms = max_runtime_ms


class RunTracker:
    """The receivers of one app's task signals; a Redis client per process."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.binding = Binding.of(app)
        self.base_prefix = self.binding.keys.prefix
        self._scripts: dict[str, Scripts] = {}
        self._lock = threading.Lock()
        self._warned_at = float("-inf")
        self._refused: set[str] = set()
        #: the requests of this (main) process by task id, while Celery holds them: a hard
        #: time limit reports only the task id
        self._received: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()

    # -- signals --------------------------------------------------------------------------

    def connect(self) -> None:
        uid = f"safe_redbeat.worker.{id(self)}"
        receivers = (
            (celery_signals.task_received, self._on_received),
            (celery_signals.task_prerun, self._on_prerun),
            (celery_signals.task_postrun, self._on_postrun),
            (celery_signals.task_revoked, self._on_revoked),
            (celery_signals.task_failure, self._on_failure),
            (celery_signals.task_rejected, self._on_rejected),
            (celery_signals.task_unknown, self._on_rejected),
        )
        for signal, receiver in receivers:
            signal.connect(receiver, weak=False, dispatch_uid=f"{uid}.{signal.name}")

    def _mine(self, sender: Any) -> bool:
        return getattr(sender, "app", None) is self.app

    def _on_received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        if request is None or not self._mine(sender):
            return
        headers = getattr(request, "request_dict", None)
        if isinstance(headers, Mapping) and headers.get(HEADER_MAX_RUNTIME) is not None:
            self._received[str(request.id)] = request

    def _on_prerun(self, sender: Any = None, task_id: str = "", **_: Any) -> None:
        if self._mine(sender):
            run = self.run_of(task_id, vars(sender.request))
            if run is not None:
                self.started(run)

    def _on_postrun(
        self, sender: Any = None, task_id: str = "", state: Any = None, **_: Any
    ) -> None:
        if state == states.RETRY or not self._mine(sender):
            return  # a retry: the run goes on (its next attempt starts its time again)
        run = self.run_of(task_id, vars(sender.request))
        if run is not None:
            self.ended(run)

    def _on_revoked(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        if request is None or not self._mine(sender):
            return
        run = self.run_of(str(getattr(request, "id", "")), vars(request))
        if run is not None:
            self.ended(run)

    def _on_failure(
        self, sender: Any = None, task_id: str = "", exception: Any = None, **_: Any
    ) -> None:
        """In the worker's main process: a child lost mid-run, a hard time limit (the
        child's own failures end in ``task_postrun``)."""
        if not isinstance(exception, WorkerLostError | TimeLimitExceeded):
            return
        if not self._mine(sender):
            return
        context = getattr(sender, "request", None)
        headers: Mapping[str, Any] = {}
        if context is not None and getattr(context, "id", None) == task_id:
            headers = vars(context)
        else:
            request = self._received.get(task_id)
            found = getattr(request, "request_dict", None)
            headers = found if isinstance(found, Mapping) else {}
        run = self.run_of(task_id, headers)
        if run is not None:
            self.ended(run)

    def _on_rejected(self, sender: Any = None, message: Any = None, **kwargs: Any) -> None:
        """A message the worker refused (an unknown task, a malformed one): no run."""
        if message is None or not self._mine(sender):
            return
        headers = getattr(message, "headers", None) or {}
        task_id = headers.get("id") or kwargs.get("id") or ""
        run = self.run_of(str(task_id), headers)
        if run is not None:
            self.ended(run)

    # -- the records ----------------------------------------------------------------------

    def run_of(self, task_id: str, headers: Mapping[str, Any]) -> Run | None:
        """The run of a message with ``headers``, if beat sent it under an overlap policy
        of this app's schedule; None otherwise (nothing to record)."""
        max_runtime = headers.get(HEADER_MAX_RUNTIME)
        if max_runtime is None or not task_id:
            return None
        prefix, entry = headers.get(HEADER_PREFIX), headers.get(HEADER_ENTRY)
        problem = ""
        if (
            isinstance(max_runtime, bool)
            or not isinstance(max_runtime, int | float)
            or not max_runtime > 0
        ):
            problem = f"{HEADER_MAX_RUNTIME} {max_runtime!r} is not a positive number"
        elif not isinstance(prefix, str) or not is_prefix_of(self.base_prefix, prefix):
            problem = (
                f"{HEADER_PREFIX} {prefix!r} is not a key prefix of this app's schedule "
                f"(redbeat_key_prefix {self.base_prefix!r}): is the worker configured as beat?"
            )
        else:
            try:
                check_name(entry)
            except Exception as exc:
                problem = f"{HEADER_ENTRY} {entry!r}: {exc}"
        if problem:
            self._refuse(problem)
            return None
        assert isinstance(prefix, str) and isinstance(entry, str)
        return Run(task_id, prefix, entry, max(round(float(max_runtime) * 1000), 1))

    def started(self, run: Run) -> None:
        """Record ``run`` as going (``max_runtime`` from now, Redis time)."""
        self._call("record the start of", run, True)

    def ended(self, run: Run) -> None:
        """Delete ``run``'s record (only its own)."""
        self._call("record the end of", run, False)

    def _call(self, what: str, run: Run, start: bool) -> None:
        try:
            scripts = self._scripts_for(run.prefix)
            if start:
                scripts.run_started(run.entry, run.task_id, run.max_runtime_ms)
            else:
                scripts.run_ended(run.entry, run.task_id)
        except CLIENT_ERRORS as exc:
            now = time.monotonic()
            if now - self._warned_at >= WARN_EVERY:
                self._warned_at = now
                logger.warning(
                    "safe_redbeat: could not %s the run %s of %r in Redis (%s); it counts "
                    "as going until its max_runtime passes",
                    what,
                    run.task_id,
                    run.entry,
                    sanitize_text(f"{type(exc).__name__}: {exc}"),
                )
        else:
            logger.debug("safe_redbeat: %s the run %s of %r: done", what, run.task_id, run.entry)

    def _scripts_for(self, prefix: str) -> Scripts:
        """The scripts of the keys below ``prefix`` (redis-py's pool reconnects in a
        forked child by itself)."""
        with self._lock:
            scripts = self._scripts.get(prefix)
            if scripts is None:
                client = self.binding.client()
                scripts = Scripts(client, Keys(prefix=prefix, lease=prefix + ":lock"))
                self._scripts[prefix] = scripts
            return scripts

    def _refuse(self, problem: str) -> None:
        if problem in self._refused:
            return
        if len(self._refused) < 1000:
            self._refused.add(problem)
        logger.warning("safe_redbeat: a run is not tracked: %s", problem)
