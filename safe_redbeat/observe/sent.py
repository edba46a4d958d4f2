"""One INFO line per occurrence the broker took, in Celery beat's wording: did it fire?

Stock beat logs ``Scheduler: Sending due task <name> (<task>)`` for every entry it sends.
safe_redbeat logs the same words once the occurrence is in the broker (its batch was
accepted, or the claim script pushed it onto its queue: atomic enqueue), with
what tells one occurrence from another (one line)::

    Scheduler: Sending due task nightly-report (proj.tasks.report), task id 0f6c...,
    scheduled 2026-12-01 03:00:00 UTC

and ``, republished`` when a pending record was sent again (same task id). With
``safe_redbeat_log_format = "json"`` the line is a JSON object with ``event``
``occurrence_sent`` and the fields ``entry``, ``task``, ``task_id``, ``scheduled`` (UNIX
seconds), ``republished`` and ``fence``. ``safe_redbeat_log_sent = False`` turns it off for
schedules whose volume would drown the log. The logger is ``safe_redbeat``, the
scheduler's own (a child logger of it would be moved under ``celery`` by Celery's
``get_logger``, away from the JSON handler).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from celery.utils.log import get_logger

from ..config import Settings
from ..model.occurrence import Occurrence

__all__ = ["announce", "announcing", "log_sent"]

logger = get_logger("safe_redbeat")

Ack = Callable[[Sequence[Occurrence]], None]


def announcing(ack: Ack, settings: Settings, *, fence: int, republished: bool) -> Ack:
    """``ack``, followed by :func:`log_sent` of what it acknowledged; ``ack`` itself when
    ``safe_redbeat_log_sent`` is off."""
    if not settings.log_sent:
        return ack

    def ack_and_log(sent: Sequence[Occurrence]) -> None:
        ack(sent)
        log_sent(sent, fence=fence, republished=republished)

    return ack_and_log


def announce(
    settings: Settings, occurrences: Sequence[Occurrence], *, fence: int, republished: bool
) -> None:
    """:func:`log_sent`, unless ``safe_redbeat_log_sent`` is off (for a path that has no
    acknowledgement to wrap: an atomic enqueue is sent when its claim returns)."""
    if settings.log_sent:
        log_sent(occurrences, fence=fence, republished=republished)


def log_sent(occurrences: Sequence[Occurrence], *, fence: int, republished: bool) -> None:
    """One INFO line (a JSON event with JSON logs) per occurrence the broker accepted."""
    if not occurrences or not logger.isEnabledFor(logging.INFO):
        return
    again = ", republished" if republished else ""
    for occurrence in occurrences:
        logger.info(
            "Scheduler: Sending due task %s (%s), task id %s, scheduled %s%s",
            occurrence.entry,
            occurrence.task,
            occurrence.task_id,
            _utc(occurrence.scheduled),
            again,
            extra={
                "event_fields": {
                    "event": "occurrence_sent",
                    "entry": occurrence.entry,
                    "task": occurrence.task,
                    "task_id": occurrence.task_id,
                    "scheduled": occurrence.scheduled,
                    "republished": republished,
                    "fence": fence,
                }
            },
        )


def _utc(scheduled: int) -> str:
    try:
        return datetime.fromtimestamp(scheduled, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return str(scheduled)
