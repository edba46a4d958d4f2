"""The outbox: pending records of claimed occurrences, from claim to broker to dead letter.

The claim script records each claimed occurrence in ``<prefix>:pending``. The leader
publishes it; a chunk the broker accepted is acknowledged (its records deleted). What
stays pending is republished with the same task id:

* the broker did not take them (see :mod:`.publisher` for how a broker fault is told
  from a message's own): the records stay as they are (no attempt is counted, the message
  is not at fault) and the leader claims nothing new, on any tick, until the broker takes
  them again, so the outbox holds at most what was due when the broker went away and an
  outage yields one run per entry (the republish, coalesced by :mod:`.catchup`);
* the message failed on its own (options Celery rejects, arguments the task refuses): the
  attempt is counted on the record; after ``safe_redbeat_publish_attempts`` the record moves
  to ``<prefix>:dead`` with its last error and one ERROR line. ``safe-redbeat dead`` lists,
  retries or drops dead letters;
* a record that cannot be decoded moves to the dead letters at once.

Every move is a compare-and-set on the record (``move.lua``), fenced by the lease token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from celery.utils.log import get_logger

from .. import signals
from ..config import Settings
from ..errors import FencedOut
from ..leader.backoff import Backoff
from ..model.occurrence import Occurrence
from ..observe import sent as sent_log
from ..store.keys import Keys
from ..store.scripts import Move, MoveCode, Scripts
from . import hooks
from .publisher import Publisher, SendReport

__all__ = ["DeadLetter", "Outbox", "read_dead_letters"]

logger = get_logger("safe_redbeat")

#: Pending records read per HSCAN page when republishing.
_PAGE = 1000


@dataclass(frozen=True)
class DeadLetter:
    """One record of ``<prefix>:dead``: the occurrence, or the raw text it could not be."""

    task_id: str
    raw: str
    occurrence: Occurrence | None
    problem: str = ""


def read_dead_letters(client: Any, keys: Keys, *, limit: int | None = None) -> list[DeadLetter]:
    """The dead letters, decoded where possible (HSCAN, never HGETALL on a large hash)."""
    letters: list[DeadLetter] = []
    for task_id, raw in client.hscan_iter(keys.dead, count=_PAGE):
        try:
            letters.append(DeadLetter(task_id, raw, Occurrence.from_json(task_id, raw)))
        except ValueError as exc:
            letters.append(DeadLetter(task_id, raw, None, str(exc)))
        if limit is not None and len(letters) >= limit:
            break
    return letters


@dataclass
class _Settlement:
    """What one publish left to write back: records to update in place or bury."""

    retry: list[Move] = field(default_factory=list)
    bury: list[Move] = field(default_factory=list)


@dataclass(eq=False)
class Outbox:
    """Publishes claimed occurrences and keeps their pending records honest."""

    client: Any
    keys: Keys
    scripts: Scripts
    publisher: Publisher
    settings: Settings
    _: KW_ONLY
    monotonic: Callable[[], float] = time.monotonic
    _failures: int = field(default=0, init=False)
    _retry_at: float = field(default=0.0, init=False)
    #: the last publish was refused by the broker: claim nothing new until it takes one
    refusing: bool = field(default=False, init=False)
    _dead_full_reported: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._backoff = Backoff(self.settings.retry_seconds, self.settings.backoff_max_seconds)

    def retry_now(self) -> None:
        """Republish at the next chance (after an election, or a Redis error)."""
        self._retry_at = 0.0
        self._failures = 0

    def should_republish(self, pending: int) -> bool:
        return pending > 0 and self.monotonic() >= self._retry_at

    def retry_in(self) -> float:
        """Seconds until the next republish is due (0 if it is)."""
        return max(self._retry_at - self.monotonic(), 0.0)

    def publish(
        self,
        occurrences: Sequence[Occurrence],
        *,
        fence: int,
        token: str,
        keep_leading: Callable[[], None],
        republished: bool = False,
    ) -> SendReport:
        """Publish, acknowledge what went out, count failures on the records."""
        occurrences = hooks.prepare(self.publisher.app, self.client, self.keys, occurrences)
        ack = signals.acking(self, self._ack, fence=fence, republished=republished)
        ack = sent_log.announcing(ack, self.settings, fence=fence, republished=republished)
        report = self.publisher.send(occurrences, fence=fence, ack=ack, keep_leading=keep_leading)
        if report.refused:
            if not self.refusing:
                logger.error(
                    "beat: the broker refused %d messages (%s); they stay pending and are "
                    "sent again with the same task ids; nothing new is claimed until then",
                    len(report.refused),
                    report.broker_error,
                )
            self.refusing = True
            self._back_off()
        elif self.refusing and (report.sent or report.failed):
            logger.info("beat: the broker takes messages again")
            self.refusing = False
        if report.failed:
            self._settle(report.failed, token)
        return report

    def republish(self, *, fence: int, token: str, keep_leading: Callable[[], None]) -> SendReport:
        """Publish every pending record (ours, or a previous leader's)."""
        occurrences: list[Occurrence] = []
        malformed: list[Move] = []
        problems: list[str] = []
        for task_id, raw in self.client.hscan_iter(self.keys.pending, count=_PAGE):
            try:
                occurrences.append(Occurrence.from_json(task_id, raw))
            except ValueError as exc:
                logger.warning(
                    "beat: pending record %r in %r cannot be published (%s); moved to the "
                    "dead letters (%r)",
                    task_id,
                    self.keys.pending,
                    exc,
                    self.keys.dead,
                )
                malformed.append(Move(task_id, raw, raw))
                problems.append(str(exc))
        if malformed:
            codes = self._move(self.keys.dead, malformed, token)
            for move, problem, code in zip(malformed, problems, codes, strict=True):
                if code is MoveCode.DONE:
                    signals.dead(self, move.task_id, None, problem)
        report = self.publish(
            occurrences, fence=fence, token=token, keep_leading=keep_leading, republished=True
        )
        if report.sent:
            logger.info("beat: republished %d pending occurrences", len(report.sent))
        if report.failed and not report.refused:
            self._back_off()
        elif not report.refused:
            self._failures = 0
        return report

    def _back_off(self) -> None:
        self._failures += 1
        self._retry_at = self.monotonic() + self._backoff.delay(self._failures)

    def _ack(self, sent: Sequence[Occurrence]) -> None:
        # Not fenced on purpose: an ack records a publish that happened. Refusing it
        # would only make the next leader send the same task id again.
        if sent:
            self.client.hdel(self.keys.pending, *(o.task_id for o in sent))

    def _settle(self, failed: Iterable[tuple[Occurrence, str]], token: str) -> None:
        settlement = _Settlement()
        buried: list[tuple[Occurrence, str]] = []
        attempts = self.settings.publish_attempts
        for occurrence, error in failed:
            after = occurrence.failed(error)
            change = Move(occurrence.task_id, occurrence.record, after.to_json())
            if after.attempts >= attempts:
                settlement.bury.append(change)
                buried.append((after, error))
                logger.error(
                    "beat: could not send %r (task %s) in %d attempts, last: %s; moved to "
                    "the dead letters (safe-redbeat dead list)",
                    occurrence.entry,
                    occurrence.task,
                    after.attempts,
                    error,
                )
            else:
                settlement.retry.append(change)
                logger.warning(
                    "beat: could not send %r (task %s), attempt %d of %d: %s; it stays pending",
                    occurrence.entry,
                    occurrence.task,
                    after.attempts,
                    attempts,
                    error,
                )
        if settlement.retry:
            self._move(self.keys.pending, settlement.retry, token)
        if settlement.bury:
            codes = self._move(self.keys.dead, settlement.bury, token)
            for (occurrence, error), code in zip(buried, codes, strict=True):
                if code is not MoveCode.DONE:
                    continue
                if occurrence.max_runtime is not None:
                    # it reached no worker: under an overlap policy it no longer counts
                    # as going (`dead retry` sends it without counting it)
                    self.scripts.run_ended(occurrence.entry, occurrence.task_id)
                signals.dead(self, occurrence.task_id, occurrence, error)

    def _move(self, destination: str, records: list[Move], token: str) -> list[MoveCode]:
        """``move.lua`` from the pending hash to ``destination``, in pages; its codes."""
        limit = self.settings.dead_letter_max if destination == self.keys.dead else None
        codes: list[MoveCode] = []
        for start in range(0, len(records), _PAGE):
            page = records[start : start + _PAGE]
            reply = self.scripts.move(
                self.keys.pending,
                destination,
                page,
                token=token,
                limit=limit,
            )
            if reply.fenced_out:
                raise FencedOut("Redis rejected a pending-record update: the lease is not ours")
            codes.extend(reply.codes)
            full = reply.codes.count(MoveCode.FULL)
            if full and not self._dead_full_reported:
                self._dead_full_reported = True
                logger.error(
                    "beat: the dead letters %r hold %s records (safe_redbeat_dead_letter_max); "
                    "%d failing records stay pending. Look at them with `safe-redbeat dead "
                    "list` and drop or retry them.",
                    self.keys.dead,
                    limit,
                    full,
                )
        return codes
