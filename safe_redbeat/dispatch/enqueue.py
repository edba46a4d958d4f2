"""Atomic enqueue: claim an occurrence and push its task message in one fenced step.

Publishing to a broker cannot be fenced: a leader paused between its claim and the
broker's acknowledgement leaves a pending record, and the next leader sends that task id
again (:mod:`.outbox`). Where the broker is kombu's Redis transport on the Redis server
that holds the schedule (any database; Sentinel included), there is no second system: the
claim script itself pushes each claimed occurrence's message onto its queue list, in the
same step that checks the lease token and moves the schedule. A stale leader cannot
enqueue anything, and no occurrence is enqueued twice.

**The message is the one kombu would have pushed.** It is built through Celery's own
path on the replica's producer — the task's ``apply_async`` (routing, ``task_routes``,
queue/exchange/priority options, serializer, compression, ``before_task_publish`` and
``after_task_publish``), kombu's encoding and exchange lookup — with the channel's
delivery step (its ``_put``, which would ``LPUSH``) replaced for the call by one that
records the queue key and the message instead. Queue declarations and binding lookups go
to the broker as they would on any publish.

**Spend per occurrence only what changes per occurrence.** Two messages of one entry
version differ only in the task id, the slot and fence headers and kombu's delivery tag.
Where nothing else can vary (no publish signal receivers, no patched beat hook, no
``countdown``/``eta``/``expires`` option: see :meth:`MessageBuilder.templated`), the
message is built twice per entry version with two sets of placeholder values; if the two
agree once their placeholders are swapped, the result is a template, filled per
occurrence by string replacement. Otherwise every message is built through Celery.

What cannot be enqueued atomically goes through the publish path (claimed with a pending
record, then published by :mod:`.outbox`), said once per entry: a fanout exchange
(Redis PUBLISH is no list), an ``apply_async`` a task class overrides, and a message
kombu refuses to build (the outbox counts its attempts and buries it, as always). A mode
of ``atomic`` where the broker is not this Redis server refuses to start.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import kombu.transport.redis as kombu_redis
import redis.exceptions
from celery import signals as celery_signals
from celery.app.task import Task
from celery.utils.log import get_logger
from kombu.utils.json import dumps
from redis.cluster import RedisCluster

from ..config import PREFIX, Settings
from ..errors import ConfigurationError
from ..model.occurrence import HEADER_FENCE, HEADER_SCHEDULED, Occurrence
from . import hooks
from .plan import ClaimOp
from .publisher import broker_fault, send_through_celery

__all__ = [
    "EnqueueMode",
    "Enqueuer",
    "MessageBuilder",
    "NotAtomic",
    "calls",
    "choose_mode",
]

logger = get_logger("safe_redbeat")

#: Most occurrences and message bytes in one claim script call: bounds the script's time
#: in Redis (a few milliseconds per call) and the request's size.
CALL_OPERATIONS = 500
CALL_BYTES = 4 * 1024 * 1024
#: Templates kept (one per entry version, about the size of one message each).
_MAX_TEMPLATES = 100_000
#: Entries whose fallback to the publish path was said once (a bound; then again).
_MAX_SAID = 10_000
#: The kombu channel methods a message passes through on its way to the queue list.
_DELIVERY = ("basic_publish", "_inplace_augment_message", "_put", "_put_fanout", "_lookup")
#: Options whose message depends on the moment it is built.
_TIMED_OPTIONS = ("countdown", "eta", "expires")


class NotAtomic(Exception):
    """This message cannot be pushed by the claim script; the reason says why."""


@dataclass(frozen=True)
class EnqueueMode:
    """How this replica enqueues: atomically (with the databases), or by publishing."""

    atomic: bool
    reason: str
    #: (broker database, schedule database) of the shared server, when atomic
    databases: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return "atomic" if self.atomic else "publish"


def choose_mode(settings: Settings, app: Any, client: Any, producer: Any) -> EnqueueMode:
    """The enqueue mode ``settings.enqueue`` asks for, where it is possible.

    Asks both Redis connections who they are (``INFO server``), so it raises what they
    raise while either is down. ConfigurationError if ``atomic`` is asked for where it is
    not possible.
    """
    if settings.enqueue == "publish":
        return EnqueueMode(False, f"{PREFIX}enqueue is 'publish'")
    mode = _shared_server(app, client, producer)
    if not mode.atomic and settings.enqueue == "atomic":
        raise ConfigurationError(
            f"{PREFIX}enqueue is 'atomic' but {mode.reason}. Atomic enqueue needs kombu's "
            "Redis transport on the Redis server of the schedule; set it to 'auto' (atomic "
            "where possible) or 'publish'.",
            PREFIX + "enqueue",
        )
    return mode


def _shared_server(app: Any, client: Any, producer: Any) -> EnqueueMode:
    if app.conf.task_always_eager:
        return EnqueueMode(False, "task_always_eager is set (tasks run in the beat process)")
    if isinstance(client, RedisCluster):
        return EnqueueMode(
            False, "the schedule is on a Redis Cluster (kombu has no Redis Cluster transport)"
        )
    channel = producer.channel
    if not isinstance(channel, kombu_redis.Channel):
        transport = type(producer.connection.transport).__module__
        return EnqueueMode(False, f"the broker's transport is {transport}, not kombu's Redis")
    for method in _DELIVERY:
        if getattr(type(channel), method) is not getattr(kombu_redis.Channel, method):
            return EnqueueMode(
                False, f"the broker's channel class {type(channel).__name__} overrides {method}"
            )
    with channel.conn_or_acquire() as broker:
        broker_id = broker.info("server").get("run_id")
        broker_db = int(broker.connection_pool.connection_kwargs.get("db") or 0)
    schedule_id = client.info("server").get("run_id")
    schedule_db = int(client.connection_pool.connection_kwargs.get("db") or 0)
    if not broker_id or broker_id != schedule_id:
        return EnqueueMode(False, "the broker is another Redis server than the schedule's")
    if broker_db != schedule_db:
        try:  # the claim script SELECTs the broker's database: is it allowed here?
            client.eval(_SELECT_PROBE, 0, broker_db, schedule_db)
        except redis.exceptions.ResponseError as exc:
            return EnqueueMode(
                False, f"scripts may not SELECT the broker's database {broker_db} ({exc})"
            )
    where = "the same database" if broker_db == schedule_db else f"database {broker_db}"
    return EnqueueMode(
        True,
        f"the broker is the schedule's Redis server ({where})",
        (broker_db, schedule_db),
    )


#: A script that only switches to the broker's database and back (reads and writes nothing).
_SELECT_PROBE = "redis.call('SELECT', ARGV[1]); redis.call('SELECT', ARGV[2]); return 1"

#: A broker command of the claim script: (verb, key, value).
Command = tuple[str, str, str]


#: What changes from one message of an entry version to the next: the task id (in the
#: headers ``id`` and ``root_id`` and the property ``correlation_id``), safe_redbeat's
#: fence and slot headers, and kombu's delivery tag.
_VARYING_HEADERS = ("id", "root_id", HEADER_FENCE, HEADER_SCHEDULED)
_VARYING_PROPERTIES = ("correlation_id", "delivery_tag")


@dataclass(frozen=True)
class _Values:
    """The values that vary per message, as they appear in it."""

    task_id: str
    fence: int
    scheduled: int
    tag: str

    @classmethod
    def markers(cls) -> _Values:
        """Placeholders: random, so they occur nowhere else in a message."""
        rng = random.SystemRandom()
        return cls(
            str(uuid.uuid4()),
            rng.randrange(10**17, 10**18),
            rng.randrange(10**17, 10**18),
            str(uuid.uuid4()),
        )

    def of(self, name: str) -> Any:
        """The value of a varying header or property."""
        if name in ("id", "root_id", "correlation_id"):
            return self.task_id
        if name == HEADER_FENCE:
            return self.fence
        if name == HEADER_SCHEDULED:
            return self.scheduled
        return self.tag


@dataclass(frozen=True)
class _Template:
    """An entry version's broker commands with placeholders where messages vary.

    ``verified`` once a second message built through Celery equalled the filled template.
    """

    commands: tuple[Command, ...]
    markers: _Values
    verified: bool = False

    def fill(self, values: _Values) -> tuple[Command, ...]:
        m = self.markers
        pairs = (
            (m.task_id, values.task_id),
            (str(m.fence), str(values.fence)),
            (str(m.scheduled), str(values.scheduled)),
            (m.tag, values.tag),
        )
        filled = []
        for verb, key, value in self.commands:
            if verb == "lpush":
                for marker, real in pairs:
                    value = value.replace(marker, real)
            filled.append((verb, key, value))
        return tuple(filled)


@dataclass(frozen=True)
class _Built:
    commands: tuple[Command, ...]
    #: the same commands with placeholders (when asked for)
    template: tuple[Command, ...]
    #: the delivery tag kombu gave the message
    tag: str


class MessageBuilder:
    """Builds the broker commands that enqueue an occurrence, as kombu would push it.

    Per entry version (``version_key``: the entry key and its stored definition): the
    first message is built through Celery, and a template is kept beside it; the second is
    built through Celery too and compared with the filled template; from the third on,
    the template is filled (no Celery call) if the two agreed. Messages that may vary
    otherwise (see :meth:`templated`) are built through Celery every time.
    """

    def __init__(self, app: Any, producer: Callable[[], Any]) -> None:
        self.app = app
        self._producer = producer
        #: version key -> its template, or None: built through Celery each time
        self._templates: dict[tuple[str, str], _Template | None] = {}

    def commands(
        self, occurrence: Occurrence, fence: int, version_key: tuple[str, str] | None = None
    ) -> tuple[Command, ...]:
        """The commands that enqueue ``occurrence``; NotAtomic if the claim script cannot
        push it, or whatever Celery and kombu raise for this message."""
        self._check_task(occurrence)
        if version_key is None or not self.templated(occurrence):
            return self._build(occurrence, fence).commands
        known = self._templates.get(version_key, _MISSING)
        if isinstance(known, _Template) and known.verified:
            values = _Values(occurrence.task_id, fence, occurrence.scheduled, _new_tag())
            return known.fill(values)
        if known is None:  # its messages vary: always built
            return self._build(occurrence, fence).commands
        markers = _Values.markers()
        built = self._build(occurrence, fence, markers)
        if known is _MISSING:
            if len(self._templates) >= _MAX_TEMPLATES:
                self._templates.clear()
            self._templates[version_key] = _Template(built.template, markers)
        else:
            values = _Values(occurrence.task_id, fence, occurrence.scheduled, built.tag)
            agreed = known.fill(values) == built.commands
            self._templates[version_key] = replace(known, verified=True) if agreed else None
            if not agreed:
                logger.debug(
                    "beat: the messages of %r vary beyond task id, slot and fence; each is "
                    "built through Celery",
                    occurrence.entry,
                )
        return built.commands

    def templated(self, occurrence: Occurrence) -> bool:
        """True if nothing but the per-message values can differ between two of its
        messages: no option that depends on the moment (``countdown``, ``eta``,
        ``expires``), no receiver of Celery's publish signals."""
        if any(name in occurrence.options for name in _TIMED_OPTIONS):
            return False
        signals = (celery_signals.before_task_publish, celery_signals.after_task_publish)
        return not any(signal.receivers for signal in signals)

    def forget(self) -> None:
        """Build every template again."""
        self._templates.clear()

    def _check_task(self, occurrence: Occurrence) -> None:
        task = self.app.tasks.get(occurrence.task)
        if task is None:
            return  # sent by name: Celery's send_task, nothing of ours in between
        owner = next(c for c in type(task).__mro__ if "apply_async" in c.__dict__)
        if owner is not Task and not issubclass(Task, owner):
            raise NotAtomic(
                f"task {occurrence.task!r} overrides apply_async ({owner.__qualname__}); "
                "what it does around the send cannot run inside the claim"
            )

    def _build(self, occurrence: Occurrence, fence: int, markers: _Values | None = None) -> _Built:
        producer = self._producer()
        channel = producer.channel
        values = _Values(occurrence.task_id, fence, occurrence.scheduled, "")
        recording = _Recording(channel, values, markers)
        channel._put = recording.put
        channel._put_fanout = recording.put_fanout
        try:
            # retry=False: a connection error must not make kombu revive another channel
            # (one whose delivery really pushes); the caller decides what the error means
            send_through_celery(self.app, producer, occurrence, fence, retry=False)
        finally:
            del channel._put
            del channel._put_fanout
        if not recording.commands:
            raise NotAtomic("kombu delivered the message through no queue list")
        return _Built(tuple(recording.commands), tuple(recording.template), recording.tag)


_MISSING: Any = object()


def _new_tag() -> str:
    """A delivery tag as kombu's virtual transport makes one."""
    return str(uuid.uuid4())


class _Recording:
    """Stands in for a Redis channel's delivery (``_put``): records what it would push,
    and, given ``markers``, the same message with them in place of ``values``."""

    def __init__(self, channel: Any, values: _Values, markers: _Values | None) -> None:
        self.channel = channel
        self.values = values
        self.markers = markers
        self.commands: list[Command] = []
        self.template: list[Command] = []
        self.tag = ""
        self.prefix = str(getattr(channel, "global_keyprefix", "") or "")

    def put(self, queue: str, message: dict[str, Any], **_kwargs: Any) -> None:
        channel = self.channel
        self.tag = str(message["properties"].get("delivery_tag", ""))
        priority = channel._get_message_priority(message, reverse=False)
        key = self.prefix + channel._q_for_pri(queue, priority)
        self.commands.append(("lpush", key, dumps(message)))  # type: ignore[no-untyped-call]
        if self.markers is not None:
            self.template.append(("lpush", key, self._with_markers(message)))
        expires = (getattr(channel, "_expires", None) or {}).get(queue)
        if expires is not None:
            for step in channel.priority_steps:
                expiry = (
                    "pexpire",
                    self.prefix + channel._q_for_pri(queue, step),
                    str(int(expires)),
                )
                self.commands.append(expiry)
                self.template.append(expiry)

    def _with_markers(self, message: dict[str, Any]) -> str:
        assert self.markers is not None
        values = replace(self.values, tag=self.tag)
        headers = dict(message.get("headers") or {})
        properties = dict(message.get("properties") or {})
        for part, names in ((headers, _VARYING_HEADERS), (properties, _VARYING_PROPERTIES)):
            for name in names:
                if name in part and part[name] == values.of(name):
                    part[name] = self.markers.of(name)
        marked = {**message, "headers": headers, "properties": properties}
        return dumps(marked)  # type: ignore[no-untyped-call,no-any-return]

    def put_fanout(self, exchange: str, _message: Any, _routing_key: str, **_kw: Any) -> None:
        raise NotAtomic(
            f"exchange {exchange!r} is a fanout exchange (Redis PUBLISH, not a queue list)"
        )


class Enqueuer:
    """The replica's enqueue mode, decided once both Redis connections answer, and the
    messages of the occurrences it enqueues atomically."""

    def __init__(
        self, app: Any, settings: Settings, client: Callable[[], Any], producer: Callable[[], Any]
    ) -> None:
        self.app = app
        self.settings = settings
        self._client = client
        self._producer = producer
        self.builder = MessageBuilder(app, producer)
        self._mode: EnqueueMode | None = None
        self._said: set[str] = set()

    @property
    def decided(self) -> EnqueueMode | None:
        """The mode, once decided (``status`` and the heartbeat show it)."""
        return self._mode

    def mode(self) -> EnqueueMode:
        """The mode, decided once both connections answered. Until then: with ``auto``,
        ``publish`` (decided again at the next batch); with ``atomic``, the connection's
        error (a Redis error: nothing is dispatched until it is decided).
        ConfigurationError (logged as one ERROR) if ``atomic`` is not possible."""
        if self._mode is not None:
            return self._mode
        if self.settings.enqueue == "publish":
            self._mode = choose_mode(self.settings, self.app, None, None)
        else:
            try:
                self._mode = choose_mode(self.settings, self.app, self._client(), self._producer())
            except ConfigurationError as exc:
                logger.error("beat: %s", exc)
                raise
            except Exception as exc:  # a connection down
                if self.settings.enqueue == "atomic":
                    if isinstance(exc, redis.exceptions.RedisError):
                        raise
                    raise redis.exceptions.ConnectionError(
                        f"the broker did not answer (enqueue mode not decided): {exc}"
                    ) from exc
                logger.debug("beat: enqueue mode not decided yet: %s", exc)
                return EnqueueMode(False, f"not decided yet ({type(exc).__name__})")
        logger.info("beat: enqueue mode %s: %s", self._mode.name, self._mode.reason)
        return self._mode

    def prepare(
        self,
        ops: Sequence[ClaimOp],
        fence: int,
        client: Any,
        keys: Any,
        keep_leading: Callable[[], None] = lambda: None,
    ) -> list[ClaimOp]:
        """``ops`` with the broker commands of each occurrence that can be enqueued
        atomically; the others stay as they are (claimed pending, then published).
        A Redis error if the broker (this Redis server) did not answer while a message
        was built."""
        occurrences = [op.occurrence for op in ops if op.occurrence is not None]
        if not occurrences:
            return list(ops)
        prepared = iter(hooks.prepare(self.app, client, keys, occurrences))
        static = hooks.patched_hook() is None
        out: list[ClaimOp] = []
        for op in ops:
            if op.occurrence is None:
                out.append(op)
                continue
            occurrence = next(prepared)
            keep_leading()  # as before each publish: renew when due, stop if lost
            # a message's constant part: the definition, and the overlap policy's headers
            version = f"{op.definition}\x00{occurrence.prefix}\x00{occurrence.max_runtime}"
            version_key = (op.key, version) if static and op.definition else None
            try:
                commands = self.builder.commands(occurrence, fence, version_key)
            except NotAtomic as exc:
                self._say(op.occurrence.entry, str(exc))
                out.append(op)  # published: the outbox passes it through the hook then
                continue
            except Exception as exc:  # the broker, or this message (the outbox counts it)
                if broker_fault(exc, self._answers):
                    if isinstance(exc, redis.exceptions.RedisError):
                        raise
                    raise redis.exceptions.ConnectionError(
                        f"the broker did not answer while a message was built: {exc}"
                    ) from exc
                out.append(op)
                continue
            out.append(replace(op, occurrence=occurrence, pushes=commands))
        return out

    def _answers(self) -> bool:
        """The broker is the schedule's server: does it answer a PING?"""
        try:
            return bool(self._client().ping())
        except Exception:
            return False

    def _say(self, entry: str, reason: str) -> None:
        if entry in self._said:
            return
        if len(self._said) >= _MAX_SAID:
            self._said.clear()
        self._said.add(entry)
        logger.warning("beat: entry %r is published, not enqueued atomically: %s", entry, reason)


def calls(ops: Sequence[ClaimOp]) -> Iterator[list[ClaimOp]]:
    """``ops`` in claim script calls of at most CALL_OPERATIONS and about CALL_BYTES."""
    call: list[ClaimOp] = []
    size = 0
    for op in ops:
        weight = sum(len(value) for _verb, _key, value in op.pushes)
        if call and (len(call) >= CALL_OPERATIONS or size + weight > CALL_BYTES):
            yield call
            call, size = [], 0
        call.append(op)
        size += weight
    if call:
        yield call
