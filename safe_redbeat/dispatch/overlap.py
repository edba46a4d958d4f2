"""The leader's side of the overlap policy: what a claim found still running.

``claim.lua`` decides, in the fenced step that claims an occurrence, whether the entry's
previous run still counts as going (:mod:`safe_redbeat.store.running`): under ``skip``
it sends nothing and moves the slot on; under ``replace`` it sends the occurrence and
answers the running task ids. Here: one INFO line per skipped or replacing occurrence,
the :data:`~safe_redbeat.signals.occurrence_overlapped` signal, and the revoke of the
replaced runs.

The revoke is Celery's remote control (``app.control.revoke(ids, terminate=True)``), a
broadcast on the broker. It is best effort and must never hold up the beat loop (kombu
retries a broadcast for as long as the broker does not answer), so a :class:`Revoker`
sends it from a thread of its own.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from celery.utils.log import get_logger

from .. import signals
from ..model.lifecycle import OVERLAP_SKIP
from ..store.connection import sanitize_text
from ..store.running import decode_runs
from .plan import ClaimOp, Running, Settled

__all__ = ["Revoker", "likely_skipped", "report"]

logger = get_logger("safe_redbeat")

#: Revoke requests waiting for the broker; past it, new ones are dropped (one WARNING).
_MAX_WAITING = 10_000


class Revoker:
    """Revokes (and terminates) runs from a daemon thread, in the order asked."""

    def __init__(self, app: Any, *, terminate: bool = True) -> None:
        self.app = app
        self.terminate = terminate
        self._queue: queue.Queue[tuple[str, ...]] = queue.Queue(_MAX_WAITING)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def revoke(self, task_ids: Sequence[str]) -> None:
        """Ask the workers to revoke ``task_ids`` (terminating them where running)."""
        if not task_ids:
            return
        self._start()
        try:
            self._queue.put_nowait(tuple(task_ids))
        except queue.Full:
            logger.warning(
                "beat: %d revokes wait for the broker; not revoked: %s",
                _MAX_WAITING,
                ", ".join(task_ids),
            )

    def join(self, timeout: float) -> bool:
        """Wait until every revoke asked for was sent; True if they were in time."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="safe_redbeat-revoke", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            task_ids = self._queue.get()
            try:
                self._send(task_ids)
            finally:
                self._queue.task_done()

    def _send(self, task_ids: tuple[str, ...]) -> None:
        try:
            self.app.control.revoke(list(task_ids), terminate=self.terminate)
        except Exception as exc:  # the broker: best effort, said once per request
            logger.warning(
                "beat: could not revoke %s: %s",
                ", ".join(task_ids),
                sanitize_text(f"{type(exc).__name__}: {exc}"),
            )
        else:
            logger.debug("beat: revoked %s (terminate=%s)", ", ".join(task_ids), self.terminate)


def likely_skipped(client: Any, ops: Sequence[ClaimOp]) -> set[int]:
    """The positions in ``ops`` of occurrences the claim will likely skip: their entry's
    policy is ``skip`` and another of its runs counts as going now (one pipeline; none
    without such an entry).

    With atomic enqueue their messages are not built: building one runs Celery's publish
    path (its signals, a patched beat hook) for a message that would not be enqueued. The
    claim still decides; one it sends after all is published from its pending record.
    """
    asked = [
        (index, op.overlap)
        for index, op in enumerate(ops)
        if op.overlap is not None and op.overlap.policy == OVERLAP_SKIP
    ]
    if not asked:
        return set()
    with client.pipeline(transaction=False) as pipe:
        pipe.time()
        for _index, overlap in asked:
            pipe.hgetall(overlap.running_key)
        (seconds, micros), *replies = pipe.execute(raise_on_error=False)
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    busy = set()
    for (index, overlap), reply in zip(asked, replies, strict=True):
        if isinstance(reply, dict) and any(
            run.task_id != overlap.task_id for run in decode_runs(reply, now_ms)
        ):
            busy.add(index)
    return busy


def report(
    sender: Any,
    settled: Settled,
    revoke: Callable[[Sequence[str]], None],
) -> None:
    """Log what the claim found running, send the signals, revoke what is replaced."""
    for found in settled.skipped:
        _say(found, "skipped: its previous run is still going (overlap=skip)")
        _signal(sender, found, "skipped")
    for found in settled.replacing:
        _say(found, "claimed; its previous run is revoked (overlap=replace)")
        _signal(sender, found, "replaced")
        revoke(found.running)


def _say(found: Running, what: str) -> None:
    occurrence = found.occurrence
    logger.info(
        "beat: %r scheduled %s %s, task id %s; running: %s",
        occurrence.entry,
        datetime.fromtimestamp(occurrence.scheduled, tz=timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC"
        ),
        what,
        occurrence.task_id,
        ", ".join(found.running) or "-",
    )


def _signal(sender: Any, found: Running, action: str) -> None:
    if not signals.occurrence_overlapped.receivers:
        return
    occurrence = found.occurrence
    signals.occurrence_overlapped.send(
        sender=sender,
        entry=occurrence.entry,
        scheduled=occurrence.scheduled,
        task_id=occurrence.task_id,
        running=found.running,
        action=action,
    )
