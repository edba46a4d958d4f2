"""Publishing claimed occurrences through one Celery producer, in broker batches.

Messages go out in chunks; with kombu >= 5.7 each chunk is one broker batch (on Redis, one
pipeline), older kombu publishes them one by one. After each chunk the caller's ``ack``
removes the chunk's pending records. Before each message ``keep_leading`` runs: the
scheduler renews its lease there when due and raises if it lost it, which discards the
unflushed rest of the chunk. A chunk the broker refused stays pending and is republished
later with the same task ids.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import kombu.exceptions
from celery.utils.log import get_logger
from kombu.exceptions import OperationalError as BrokerError

from .dispatch import Occurrence

__all__ = ["Outcome", "Publisher", "SendReport"]

logger = get_logger("safe_redbeat.publisher")

#: Errors that mean the broker is not answering: the rest of the send is postponed.
#: kombu 5.7 raises BatchPublishError (not an OperationalError) from a failed batch.
_BATCH_ERROR: Any = getattr(kombu.exceptions, "BatchPublishError", BrokerError)
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    BrokerError,
    _BATCH_ERROR,
    ConnectionError,
    OSError,
)


class Outcome(enum.Enum):
    SENT = "sent"
    #: some messages failed on their own (e.g. a bad option); they stay pending
    PARTIAL = "partial"
    #: the broker did not answer: what was not sent stays pending
    BROKER_DOWN = "broker down"


@dataclass
class SendReport:
    sent: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    outcome: Outcome = Outcome.SENT


class Publisher:
    """Send occurrences with their deterministic task ids and safe_redbeat headers."""

    def __init__(
        self,
        app: Any,
        producer: Callable[[], Any],
        *,
        chunk_size: int = 500,
    ) -> None:
        self.app = app
        self._producer = producer
        self.chunk_size = chunk_size

    def send(
        self,
        occurrences: Sequence[Occurrence],
        *,
        fence: int,
        ack: Callable[[Sequence[str]], None],
        keep_leading: Callable[[], None] = lambda: None,
    ) -> SendReport:
        """Publish ``occurrences``; ``ack`` each chunk the broker accepted."""
        report = SendReport()
        for start in range(0, len(occurrences), self.chunk_size):
            chunk = occurrences[start : start + self.chunk_size]
            kept: list[str] = []
            try:
                with self._batch(len(chunk)):
                    for occurrence in chunk:
                        keep_leading()
                        if not self._apply(occurrence, fence):
                            kept.append(occurrence.task_id)
            except BROKER_ERRORS as exc:
                logger.error(
                    "beat: the broker refused %d messages (%s); they stay pending and are "
                    "sent again with the same task ids",
                    len(occurrences) - start,
                    exc,
                )
                report.outcome = Outcome.BROKER_DOWN
                report.kept.extend(o.task_id for o in occurrences[start:])
                return report
            sent = [o.task_id for o in chunk if o.task_id not in kept]
            ack(sent)
            report.sent.extend(sent)
            if kept:
                report.kept.extend(kept)
                report.outcome = Outcome.PARTIAL
        return report

    def _batch(self, size: int) -> contextlib.AbstractContextManager[Any]:
        batch = getattr(self._producer(), "batch", None)
        if batch is None:  # kombu < 5.7: one publish per message
            return contextlib.nullcontext()
        return batch(max(size, 1))  # type: ignore[no-any-return]

    def _apply(self, occurrence: Occurrence, fence: int) -> bool:
        """Hand one message to the producer; False if it failed on its own."""
        options = dict(occurrence.options)
        headers = dict(options.pop("headers", None) or {})
        headers.update(occurrence.headers(fence))
        task = self.app.tasks.get(occurrence.task)
        send = task.apply_async if task is not None else self._send_by_name(occurrence.task)
        try:
            send(
                occurrence.args,
                occurrence.kwargs,
                producer=self._producer(),
                task_id=occurrence.task_id,
                headers=headers,
                **options,
            )
        except BROKER_ERRORS:
            raise
        except Exception:
            # one bad message (e.g. an unknown option) must not stop the others
            logger.exception(
                "beat: could not send %r (task %s); it stays pending and is retried",
                occurrence.entry,
                occurrence.task,
            )
            return False
        return True

    def _send_by_name(self, name: str) -> Callable[..., Any]:
        def send(args: Any, kwargs: Any, **options: Any) -> Any:
            return self.app.send_task(name, args, kwargs, **options)

        return send
