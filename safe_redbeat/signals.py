"""Signals sent by SafeRedBeatScheduler: leadership, occurrences, ticks, reconciles.

Celery-style :class:`celery.utils.dispatch.Signal` objects; connect a receiver as with
Celery's own signals::

    from safe_redbeat import signals

    @signals.leadership_changed.connect
    def on_leadership(sender, change, fence, reason, cause, instance, **kwargs): ...

Every receiver gets ``sender`` and the keyword arguments listed with each signal; accept
``**kwargs`` so new arguments do not break it. ``sender`` is the scheduler, except for
:data:`occurrence_sent`, :data:`occurrences_sent` and :data:`occurrence_dead` (the
scheduler's :class:`~safe_redbeat.dispatch.outbox.Outbox`), :data:`entry_parked` (its
:class:`~safe_redbeat.dispatch.reader.DueReader`) and :data:`reconciled` (the source's
name). A receiver that raises is
logged by Celery and never stops the scheduler. With no receiver connected a signal costs
one attribute check per event; the per-occurrence signals are not even built.

Times are UNIX seconds: ``scheduled`` is the occurrence's slot (the
``safe_redbeat_scheduled`` header), ``sent_at`` the local wall clock after the broker
accepted the message's batch.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from celery.utils.dispatch import Signal

from .errors import LossCause
from .model.occurrence import Occurrence

__all__ = [
    "ACQUIRED",
    "LOST",
    "RELEASED",
    "batch_claimed",
    "dead",
    "entry_parked",
    "leadership_changed",
    "occurrence_dead",
    "occurrence_overlapped",
    "occurrence_sent",
    "occurrences_sent",
    "reconciled",
    "redis_error",
    "tick_finished",
]

#: ``change`` values of :data:`leadership_changed`
ACQUIRED = "acquired"
LOST = "lost"
RELEASED = "released"

#: ``change`` ("acquired", "lost", "released"), ``fence`` (int or None), ``reason`` (text
#: of a loss, else None), ``cause`` (a short code of the loss: ``key_gone``, ``taken``,
#: ``renew_deadline``, ``fenced``, ``redis_unreachable``, ``other``; else None),
#: ``instance`` (this replica's name), ``shard`` (the shard whose lease it is; 0 unsharded).
leadership_changed = Signal(name="safe_redbeat.leadership_changed")

#: One occurrence the broker accepted: ``entry`` (name), ``scheduled`` (UNIX seconds),
#: ``task_id``, ``republished`` (True when sent again from a pending record), ``fence``,
#: ``sent_at`` (UNIX seconds). Sent once per message, after its batch was acknowledged.
occurrence_sent = Signal(name="safe_redbeat.occurrence_sent")

#: The same, once per acknowledged broker batch: ``occurrences`` (a sequence of
#: :class:`~safe_redbeat.dispatch.plan.Occurrence`), ``republished``, ``fence``, ``sent_at``.
#: Cheaper than :data:`occurrence_sent` for counting (the metrics use it).
occurrences_sent = Signal(name="safe_redbeat.occurrences_sent")

#: An occurrence given up on and moved to the dead letters (``<prefix>:dead``): ``entry``,
#: ``scheduled`` (UNIX seconds), ``task_id``, ``attempts``, ``error`` (text). ``entry`` and
#: ``scheduled`` are None for a pending record that could not be decoded.
occurrence_dead = Signal(name="safe_redbeat.occurrence_dead")

#: One claim round trip of a batch: ``claimed`` and ``skipped`` (missed occurrences
#: skipped under ``catch_up="skip"``) counts.
batch_claimed = Signal(name="safe_redbeat.batch_claimed")

#: An occurrence of an entry with an overlap policy whose previous run still went when it
#: was claimed: ``entry`` (name), ``scheduled`` (UNIX seconds), ``task_id`` (this
#: occurrence's), ``running`` (the task ids of the runs still going), ``action``
#: (``"skipped"``: not sent, ``overlap="skip"``; ``"replaced"``: sent, and the running
#: ones revoked, ``overlap="replace"``).
occurrence_overlapped = Signal(name="safe_redbeat.occurrence_overlapped")

#: A malformed entry parked (left in place, checked again later): ``entry`` (name),
#: ``reason`` (text naming the field).
entry_parked = Signal(name="safe_redbeat.entry_parked")

#: A Redis error caught by the beat loop: ``error`` (the exception).
redis_error = Signal(name="safe_redbeat.redis_error")

#: One ``tick()`` done: ``duration`` (seconds), ``leader`` (bool after the tick).
tick_finished = Signal(name="safe_redbeat.tick_finished")

#: One reconcile of a source (``beat_schedule`` or ``loader``): ``result``
#: (:class:`~safe_redbeat.sync.reconcile.ReconcileResult`), ``removals_held`` (removals a
#: guard refused to apply this round, or None when unknown).
reconciled = Signal(name="safe_redbeat.reconciled")

#: the fence each sender acquired last, per shard
_fences: weakref.WeakKeyDictionary[Any, dict[int, int | None]] = weakref.WeakKeyDictionary()


def leadership(
    sender: Any,
    change: str,
    fence: int | None,
    reason: str | None = None,
    *,
    cause: LossCause | None = None,
    instance: str,
    shard: int = 0,
) -> None:
    """Send :data:`leadership_changed`.

    A lease found lost is already forgotten locally; the fence it had is the one this
    sender acquired last.
    """
    if change == ACQUIRED:
        _fences.setdefault(sender, {})[shard] = fence
    elif fence is None:
        fence = _fences.get(sender, {}).get(shard)
    if not leadership_changed.receivers:
        return
    leadership_changed.send(
        sender=sender,
        change=change,
        fence=fence,
        reason=reason,
        cause=None if cause is None else cause.value,
        instance=instance,
        shard=shard,
    )


def acking(
    sender: Any,
    ack: Callable[[Sequence[Occurrence]], None],
    *,
    fence: int,
    republished: bool,
) -> Callable[[Sequence[Occurrence]], None]:
    """``ack``, followed by the sent signals for each acknowledged broker batch.

    Returns ``ack`` itself when nobody listens, so an unobserved publish does no
    per-occurrence work.
    """
    each = bool(occurrence_sent.receivers)
    if not each and not occurrences_sent.receivers:
        return ack

    def ack_and_announce(sent: Sequence[Occurrence]) -> None:
        ack(sent)
        if not sent:
            return
        sent_at = time.time()
        occurrences_sent.send(
            sender=sender,
            occurrences=sent,
            republished=republished,
            fence=fence,
            sent_at=sent_at,
        )
        if each:
            for occurrence in sent:
                occurrence_sent.send(
                    sender=sender,
                    entry=occurrence.entry,
                    scheduled=occurrence.scheduled,
                    task_id=occurrence.task_id,
                    republished=republished,
                    fence=fence,
                    sent_at=sent_at,
                )

    return ack_and_announce


def dead(sender: Any, task_id: str, occurrence: Occurrence | None, error: str) -> None:
    """Send :data:`occurrence_dead`; ``occurrence`` is None for a record not decodable."""
    if not occurrence_dead.receivers:
        return
    occurrence_dead.send(
        sender=sender,
        entry=None if occurrence is None else occurrence.entry,
        scheduled=None if occurrence is None else occurrence.scheduled,
        task_id=task_id,
        attempts=0 if occurrence is None else occurrence.attempts,
        error=error,
    )
