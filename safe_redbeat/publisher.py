"""Publishing claimed occurrences through one Celery producer, in broker batches.

Messages go out in chunks; with kombu >= 5.7 each chunk is one broker batch (on Redis, one
pipeline), older kombu publishes them one by one. After each chunk the caller's ``ack``
removes the chunk's pending records. Before each message ``keep_leading`` runs: the
scheduler renews its lease there when due and raises if it lost it, which discards the
unflushed rest of the chunk. A chunk the broker refused stays pending and is republished
later with the same task ids.

A message that fails on its own (options Celery rejects, arguments the task's signature
refuses) never stops the others: it is reported in ``SendReport.failed`` with its error,
and the caller counts the attempt on its pending record.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kombu.exceptions import OperationalError as BrokerError

from .dispatch import Occurrence
from .errors import LeaseLost

__all__ = ["BROKER_ERRORS", "Publisher", "SendReport"]

#: Errors that mean the broker is not answering: the rest of the send is postponed.
BROKER_ERRORS: tuple[type[BaseException], ...] = (BrokerError, ConnectionError, OSError)

_PASS_THROUGH: tuple[type[BaseException], ...] = (LeaseLost, *BROKER_ERRORS)

#: Longest error text kept on a pending or dead-letter record.
ERROR_TEXT_LIMIT = 300


@dataclass
class SendReport:
    sent: list[Occurrence] = field(default_factory=list)
    #: occurrences whose own message failed, with the error (one line)
    failed: list[tuple[Occurrence, str]] = field(default_factory=list)
    #: the broker did not answer: these were not sent and stay pending as they are
    refused: list[Occurrence] = field(default_factory=list)
    broker_error: str = ""


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
        ack: Callable[[Sequence[Occurrence]], None],
        keep_leading: Callable[[], None] = lambda: None,
    ) -> SendReport:
        """Publish ``occurrences``; ``ack`` what each chunk the broker accepted sent."""
        report = SendReport()
        for start in range(0, len(occurrences), self.chunk_size):
            chunk = occurrences[start : start + self.chunk_size]
            try:
                try:
                    failed = self._send_chunk(chunk, fence, keep_leading, batched=True)
                except _PASS_THROUGH:
                    raise
                except Exception:  # a batch flush failing on content: isolate message by message
                    failed = self._send_chunk(chunk, fence, keep_leading, batched=False)
            except BROKER_ERRORS as exc:
                report.refused.extend(occurrences[start:])
                report.broker_error = _one_line(exc)
                return report
            bad = {id(occurrence) for occurrence, _error in failed}
            sent = [o for o in chunk if id(o) not in bad]
            ack(sent)
            report.sent.extend(sent)
            report.failed.extend(failed)
        return report

    def _send_chunk(
        self,
        chunk: Sequence[Occurrence],
        fence: int,
        keep_leading: Callable[[], None],
        *,
        batched: bool,
    ) -> list[tuple[Occurrence, str]]:
        failed: list[tuple[Occurrence, str]] = []
        with self._batch(len(chunk)) if batched else contextlib.nullcontext():
            for occurrence in chunk:
                keep_leading()
                error = self._apply(occurrence, fence)
                if error is not None:
                    failed.append((occurrence, error))
        return failed

    def _batch(self, size: int) -> contextlib.AbstractContextManager[Any]:
        batch = getattr(self._producer(), "batch", None)
        if batch is None:  # kombu < 5.7: one publish per message
            return contextlib.nullcontext()
        return batch(max(size, 1))  # type: ignore[no-any-return]

    def _apply(self, occurrence: Occurrence, fence: int) -> str | None:
        """Hand one message to the producer; the error text if it failed on its own."""
        try:
            options = dict(occurrence.options)
            headers = dict(options.pop("headers", None) or {})
            headers.update(occurrence.headers(fence))
            task = self.app.tasks.get(occurrence.task)
            send = task.apply_async if task is not None else self._send_by_name(occurrence.task)
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
        except Exception as exc:  # this message only: the others go on
            return _one_line(exc)
        return None

    def _send_by_name(self, name: str) -> Callable[..., Any]:
        def send(args: Any, kwargs: Any, **options: Any) -> Any:
            return self.app.send_task(name, args, kwargs, **options)

        return send


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 3] + "..."
