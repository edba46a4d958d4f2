"""Publishing claimed occurrences through one Celery producer, in broker batches.

Messages go out in chunks; with kombu >= 5.7 each chunk is one broker batch (on Redis, one
pipeline), older kombu publishes them one by one. After each chunk the caller's ``ack``
removes the chunk's pending records. Before each message ``keep_leading`` runs: the
scheduler renews its lease there when due and raises if it lost it, which discards the
unflushed rest of the chunk.

Every failure is put down either to the broker or to one message:

* **the broker** when it does not answer (a connection error, a timeout), refuses every
  write (out of memory, a read-only replica, loading, no permission), or fails a cheap
  check (a PING on its Redis connection) right after an error of unclear origin. The rest
  of the send is postponed: it stays pending, as it is, and is sent later with the same
  task ids (``SendReport.refused``);
* **one message** otherwise: options kombu rejects (an unknown compression, a
  ``delivery_mode`` it cannot read), a body it cannot encode, arguments the task's
  signature refuses, a queue key that holds another Redis type (WRONGTYPE). The message is
  reported in ``SendReport.failed`` with its error and the others go on; the caller counts
  the attempt on its pending record.

A broker batch on Redis is one pipeline, not a transaction: a command that fails on its
key (WRONGTYPE) fails alone and the others run. kombu raises for the whole batch, so on
kombu's Redis transport the batch is flushed here instead, with each command's reply kept,
and each message's outcome read from the replies of its own commands (the commands kombu
added while it was published). Only where that is not possible (another transport, a
kombu that keeps its batch elsewhere) is a batch that failed on a message sent again
message by message, so each message's own result is known; messages of that batch that
had gone out are then sent a second time, with the same task ids. An entry whose message
failed on its own is sent by itself from then on, until one of its messages goes out.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import kombu.exceptions
import redis.exceptions
from celery.utils.log import get_logger
from kombu.exceptions import OperationalError as BrokerError

from ..errors import LeaseLost
from ..model.occurrence import Occurrence

__all__ = ["BROKER_ERRORS", "Publisher", "SendReport", "broker_fault", "send_through_celery"]

logger = get_logger("safe_redbeat")

#: Errors kombu raises when the broker may not be answering; which one it is, the broker
#: or one message, :func:`broker_fault` decides. kombu 5.7 raises BatchPublishError (not
#: an OperationalError) from a failed batch.
_BATCH_ERROR: Any = getattr(kombu.exceptions, "BatchPublishError", BrokerError)
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    BrokerError,
    _BATCH_ERROR,
    ConnectionError,
    OSError,
)

#: Redis replies that refuse every write of the server, whatever the key (redis-py names
#: some of them only in later versions: their codes are below too).
_SERVER_REFUSALS: tuple[type[BaseException], ...] = tuple(
    getattr(redis.exceptions, name)
    for name in (
        "ConnectionError",  # AuthenticationError, BusyLoadingError among them
        "TimeoutError",
        "ReadOnlyError",
        "OutOfMemoryError",
        "NoPermissionError",
    )
    if hasattr(redis.exceptions, name)
)
_SERVER_REFUSAL_CODES = frozenset(
    {
        "OOM",
        "READONLY",
        "LOADING",
        "MISCONF",
        "NOAUTH",
        "WRONGPASS",
        "NOPERM",
        "BUSY",
        "MASTERDOWN",
        "NOREPLICAS",
        "CLUSTERDOWN",
        "TRYAGAIN",
        "NOSCRIPT",
    }
)
#: redis-py's annotation of an error inside a pipeline, before the server's reply
_PIPELINE_NOTE = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: ", re.DOTALL)

#: Longest error text kept on a pending or dead-letter record.
ERROR_TEXT_LIMIT = 300
#: Entries remembered as "send alone" (a bound; past it the memory starts again).
_MAX_ALONE = 10_000


class BrokerDown(Exception):
    """The broker does not take messages now; the rest of the send is postponed."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def broker_fault(exc: BaseException, answers: Callable[[], bool]) -> bool:
    """True if ``exc`` says the broker takes no messages now, False if it concerns one
    message. ``answers`` is the cheap check for errors of unclear origin."""
    for error in _chain(exc):
        if isinstance(error, _SERVER_REFUSALS):
            return True
        if isinstance(error, redis.exceptions.ResponseError):
            reply = _PIPELINE_NOTE.sub("", str(error), count=1)
            return reply.split(" ", 1)[0].upper() in _SERVER_REFUSAL_CODES
        if isinstance(error, ConnectionError | TimeoutError):  # OSError subclasses
            return True
    if not isinstance(exc, BROKER_ERRORS):
        return False  # kombu's EncodeError, a TypeError from the task's signature, ...
    # kombu's Redis transport counts a KeyError (an unknown compression) as a connection
    # error: ask the broker itself
    return not answers()


@dataclass
class SendReport:
    sent: list[Occurrence] = field(default_factory=list)
    #: occurrences whose own message failed, with the error (one line)
    failed: list[tuple[Occurrence, str]] = field(default_factory=list)
    #: the broker did not take them: these were not sent and stay pending as they are
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
        #: entries whose last message failed on its own: sent by themselves
        self._alone: set[str] = set()

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
                failed = self._send_chunk(chunk, fence, keep_leading)
            except BrokerDown as exc:
                report.refused.extend(occurrences[start:])
                report.broker_error = str(exc)
                return report
            bad = {id(occurrence) for occurrence, _error in failed}
            sent = [o for o in chunk if id(o) not in bad]
            ack(sent)
            report.sent.extend(sent)
            report.failed.extend(failed)
            self._remember(sent, failed)
        return report

    def _send_chunk(
        self, chunk: Sequence[Occurrence], fence: int, keep_leading: Callable[[], None]
    ) -> list[tuple[Occurrence, str]]:
        together = [o for o in chunk if o.entry not in self._alone]
        alone = [o for o in chunk if o.entry in self._alone] if self._alone else []
        failed = self._send_together(together, fence, keep_leading)
        failed.extend(self._send_one_by_one(alone, fence, keep_leading))
        return failed

    def _send_together(
        self, chunk: Sequence[Occurrence], fence: int, keep_leading: Callable[[], None]
    ) -> list[tuple[Occurrence, str]]:
        """One broker batch; message by message again if the batch fails on a message."""
        if not chunk:
            return []
        try:
            with self._batch(len(chunk)):
                return self._send_batched(chunk, fence, keep_leading)
        except (LeaseLost, BrokerDown):
            raise
        except Exception as exc:  # the batch's flush failed
            if broker_fault(exc, self._broker_answers):
                raise BrokerDown(_one_line(exc)) from exc
            logger.warning(
                "beat: a broker batch of %d messages failed on one of them (%s); sending "
                "them one by one (those already delivered go out again, same task ids)",
                len(chunk),
                _one_line(exc),
            )
            return self._send_one_by_one(chunk, fence, keep_leading)

    def _send_batched(
        self, chunk: Sequence[Occurrence], fence: int, keep_leading: Callable[[], None]
    ) -> list[tuple[Occurrence, str]]:
        """Publish into the open batch; flush it here, reading each message's replies,
        where the batch is a Redis pipeline."""
        failed: list[tuple[Occurrence, str]] = []
        spans: list[tuple[Occurrence, int, int]] = []
        pipeline: Any = None
        for occurrence in chunk:
            keep_leading()
            before = len(pipeline.command_stack) if pipeline is not None else 0
            error = self._apply(occurrence, fence)
            if pipeline is None:
                pipeline = _batch_pipeline(self._producer())
                before = 0
            if error is not None:
                failed.append((occurrence, error))
            elif pipeline is not None:
                spans.append((occurrence, before, len(pipeline.command_stack)))
        if pipeline is None or not spans:
            return failed  # the batch flushes when its block ends
        try:
            replies = pipeline.execute(raise_on_error=False)
        except Exception as exc:  # no reply at all: the broker's connection
            if broker_fault(exc, self._broker_answers):
                raise BrokerDown(_one_line(exc)) from exc
            raise
        refusals = [r for r in replies if isinstance(r, Exception)]
        if any(broker_fault(r, self._broker_answers) for r in refusals):
            raise BrokerDown(_one_line(refusals[0])) from refusals[0]
        for occurrence, start, end in spans:
            refused = next((r for r in replies[start:end] if isinstance(r, Exception)), None)
            if refused is not None:
                failed.append((occurrence, _one_line(refused)))
        return failed

    def _send_one_by_one(
        self, chunk: Sequence[Occurrence], fence: int, keep_leading: Callable[[], None]
    ) -> list[tuple[Occurrence, str]]:
        failed: list[tuple[Occurrence, str]] = []
        for occurrence in chunk:
            keep_leading()
            error = self._apply(occurrence, fence)
            if error is not None:
                failed.append((occurrence, error))
        return failed

    def _remember(
        self, sent: Sequence[Occurrence], failed: Sequence[tuple[Occurrence, str]]
    ) -> None:
        if failed:
            if len(self._alone) >= _MAX_ALONE:
                self._alone.clear()
            self._alone.update(occurrence.entry for occurrence, _error in failed)
        if self._alone:
            self._alone.difference_update(o.entry for o in sent)

    def _batch(self, size: int) -> contextlib.AbstractContextManager[Any]:
        batch = getattr(self._producer(), "batch", None)
        if batch is None:  # kombu < 5.7: one publish per message
            return contextlib.nullcontext()
        # room for every command of the chunk (LPUSH, and PEXPIREs of a queue with
        # x-expires): the batch flushes once, when the block ends
        return batch(max(size, 1) * 8)  # type: ignore[no-any-return]

    def _apply(self, occurrence: Occurrence, fence: int) -> str | None:
        """Hand one message to the producer; the error text if it failed on its own."""
        try:
            send_through_celery(self.app, self._producer(), occurrence, fence)
        except LeaseLost:
            raise
        except Exception as exc:  # this message only, unless the broker is down
            if broker_fault(exc, self._broker_answers):
                raise BrokerDown(_one_line(exc)) from exc
            return _one_line(exc)
        return None

    def _broker_answers(self) -> bool:
        """The cheap check: a PING on the broker's Redis (other transports: connected)."""
        try:
            producer = self._producer()
            client = getattr(producer.channel, "client", None)
            if client is None or not hasattr(client, "ping"):
                return bool(producer.connection.connected)
            client.ping()
        except Exception:
            return False
        return True


def send_through_celery(
    app: Any, producer: Any, occurrence: Occurrence, fence: int, **overrides: Any
) -> None:
    """Hand ``occurrence`` to Celery's own send path on ``producer``: its task's
    ``apply_async`` (``send_task`` by name where the task is not registered here), with
    its deterministic task id and safe_redbeat's headers over the entry's own."""
    options = dict(occurrence.options)
    headers = dict(options.pop("headers", None) or {})
    headers.update(occurrence.headers(fence))
    options.update(overrides)
    task = app.tasks.get(occurrence.task)
    if task is not None:
        task.apply_async(
            occurrence.args,
            occurrence.kwargs,
            producer=producer,
            task_id=occurrence.task_id,
            headers=headers,
            **options,
        )
    else:
        app.send_task(
            occurrence.task,
            occurrence.args,
            occurrence.kwargs,
            producer=producer,
            task_id=occurrence.task_id,
            headers=headers,
            **options,
        )


def _batch_pipeline(producer: Any) -> Any:
    """The Redis pipeline of the producer's open kombu batch, or None (not kombu's Redis
    transport, or a kombu that keeps it elsewhere)."""
    state = getattr(getattr(producer, "_batch_local", None), "current", None)
    pipeline = getattr(getattr(state, "session", None), "pipeline", None)
    if isinstance(getattr(pipeline, "command_stack", None), list) and callable(
        getattr(pipeline, "execute", None)
    ):
        return pipeline
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= ERROR_TEXT_LIMIT else text[: ERROR_TEXT_LIMIT - 3] + "..."
