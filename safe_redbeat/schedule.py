"""Manage schedule entries at run time, from any process or thread.

:class:`Schedule` is the typed API: ``upsert``, ``get``, ``list``, ``enable``, ``disable``,
``run_now`` and ``delete``. Input is validated before anything is written
(:class:`~safe_redbeat.errors.InvalidEntry`), and every write is one Lua script that
checks ``expected_version`` inside Redis: of two processes updating the same version, one
wins and the other gets :class:`~safe_redbeat.errors.VersionConflict` with nothing written.

Entries stay in RedBeat's format (``docs/storage-format.md``): stock RedBeat reads what this
module writes, and entries saved by stock RedBeat are read here with version 0.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeAlias

from celery.schedules import BaseSchedule, crontab, maybe_schedule, solar
from celery.schedules import schedule as interval
from celery.utils.log import get_logger
from redbeat.decoder import RedBeatJSONDecoder, RedBeatJSONEncoder
from redbeat.schedulers import ensure_conf, get_redis
from redbeat.schedules import rrule

from .config import Settings
from .connection import scheduler_client
from .entries import (
    StoredEntry,
    decode_entry,
    decode_meta,
    encode_definition,
    encode_meta,
    next_score,
)
from .errors import EntryNotFound, InvalidEntry, SafeRedBeatError, VersionConflict
from .keys import Keys
from .scripts import Scripts

__all__ = ["CRONTAB_FIELDS", "EntryInfo", "EntrySpec", "Schedule", "ScheduleLike", "to_schedule"]

logger = get_logger("safe_redbeat.schedule")

#: What ``schedule=`` accepts: a Celery ``schedule``, a ``timedelta`` or a number of
#: seconds (an interval), a ``crontab`` or a 5-field cron expression string, a RedBeat
#: ``rrule``, or RedBeat's JSON form of any of them as a mapping (``{"__type__": ...}``).
ScheduleLike: TypeAlias = BaseSchedule | timedelta | float | int | str | Mapping[str, Any]

#: crontab's fields, in the order of a cron expression.
CRONTAB_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")

#: Attempts of one call when Redis keeps changing under it (a claim moving ``meta``, or,
#: without ``expected_version``, another writer). Each attempt is one atomic script.
_MAX_ATTEMPTS = 50
_MAX_JSON_DEPTH = 64
_SUPPORTED = "a celery schedule, timedelta or seconds, crontab, cron string, or RedBeat rrule"


def _invalid(key: str, field_name: str, problem: str) -> InvalidEntry:
    return InvalidEntry(key, field_name, problem)


# -- validation ------------------------------------------------------------------------


def check_name(name: object) -> str:
    """Return ``name`` if it can be an entry name; raise InvalidEntry otherwise.

    Names starting with ``:`` are refused: ``<prefix>:schedule``, ``<prefix>:lock`` and the
    other internal keys are exactly the keys such entries would get.
    """
    if not isinstance(name, str) or not name:
        raise _invalid(str(name), "name", "must be a non-empty string")
    if name.startswith(":"):
        raise _invalid(
            name,
            "name",
            "must not start with ':' (it would collide with internal keys such as "
            "<prefix>:schedule, <prefix>:lock and <prefix>:pending)",
        )
    return name


def _check_json(key: str, path: str, value: Any, depth: int = 0) -> None:
    """Plain JSON only: the pending record of a claimed run is encoded with ``json``."""
    if depth > _MAX_JSON_DEPTH:
        raise _invalid(key, path, f"nested deeper than {_MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, bool | str | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _invalid(key, path, f"{value!r} is not valid JSON")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(key, f"{path}[{index}]", item, depth + 1)
        return
    if isinstance(value, Mapping):
        for item_key, item in value.items():
            if not isinstance(item_key, str):
                raise _invalid(key, path, f"JSON object keys must be strings, got {item_key!r}")
            _check_json(key, f"{path}[{item_key!r}]", item, depth + 1)
        return
    raise _invalid(
        key,
        path,
        f"{type(value).__name__} is not JSON-serialisable; args, kwargs and options must be "
        "plain JSON (None, bool, int, float, str, list, dict with str keys)",
    )


def _positive_seconds(key: str, seconds: Any) -> timedelta:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise _invalid(key, "schedule", f"an interval needs a number of seconds, got {seconds!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise _invalid(key, "schedule", f"an interval must be positive, got {seconds!r} seconds")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise _invalid(key, "schedule", f"interval of {seconds!r} seconds is too large") from None


def _crontab(key: str, fields: Mapping[str, Any]) -> crontab:
    """Build a crontab field by field so an error names the field that is wrong."""
    unknown = set(fields) - set(CRONTAB_FIELDS)
    if unknown:
        raise _invalid(key, "schedule", f"unknown crontab fields {sorted(unknown)}")
    for name, value in fields.items():
        try:
            crontab(**{name: value})
        except Exception as exc:  # ValueError, celery's ParseException, TypeError
            raise _invalid(
                key, f"schedule.{name}", f"invalid crontab field {value!r}: {exc}"
            ) from None
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise _invalid(
                key,
                f"schedule.{name}",
                f"must be a string or an int to be stored as JSON, got {value!r} "
                "(write a list as '0,30')",
            )
    try:
        return crontab(**fields)
    except Exception as exc:
        raise _invalid(key, "schedule.day_of_month", str(exc)) from None


def _from_json_form(key: str, value: Mapping[str, Any]) -> BaseSchedule:
    kind = value.get("__type__")
    body = {k: v for k, v in value.items() if k != "__type__"}
    if kind == "interval":
        unknown = set(body) - {"every", "relative"}
        if unknown:
            raise _invalid(key, "schedule", f"unknown interval fields {sorted(unknown)}")
        every = _positive_seconds(key, body.get("every"))
        return interval(every, relative=bool(body.get("relative", False)))
    if kind == "crontab":
        return _crontab(key, body)
    if kind == "rrule":
        try:
            decoded = json.loads(json.dumps(dict(value)), cls=RedBeatJSONDecoder)
        except Exception as exc:
            raise _invalid(key, "schedule", f"invalid rrule: {exc}") from None
        if not isinstance(decoded, rrule):
            raise _invalid(key, "schedule", "invalid rrule")
        return decoded
    raise _invalid(
        key,
        "schedule",
        f"unknown schedule type {kind!r} in JSON form (known: interval, crontab, rrule)",
    )


def to_schedule(value: ScheduleLike, key: str = "") -> BaseSchedule:
    """Convert and validate a schedule; raise InvalidEntry naming the bad part.

    The result is one RedBeat can store as JSON and decode again (checked by a round trip).
    """
    result: BaseSchedule
    if isinstance(value, solar):
        raise _invalid(
            key,
            "schedule",
            "solar schedules are not supported: RedBeat cannot store them as JSON "
            "(use crontab or redbeat.schedules.rrule)",
        )
    if isinstance(value, bool):
        raise _invalid(key, "schedule", f"unsupported schedule {value!r} (use {_SUPPORTED})")
    if isinstance(value, int | float):
        result = interval(_positive_seconds(key, value))
    elif isinstance(value, timedelta):
        result = interval(_positive_seconds(key, value.total_seconds()))
    elif isinstance(value, str):
        parts = value.split()
        if len(parts) != len(CRONTAB_FIELDS):
            raise _invalid(
                key,
                "schedule",
                f"a cron expression needs 5 fields (minute hour day_of_month month_of_year "
                f"day_of_week), got {value!r}",
            )
        result = _crontab(key, dict(zip(CRONTAB_FIELDS, parts, strict=True)))
    elif isinstance(value, Mapping):
        result = _from_json_form(key, value)
    elif isinstance(value, crontab):
        result = _crontab(key, {f: getattr(value, f"_orig_{f}") for f in CRONTAB_FIELDS})
    elif isinstance(value, interval):
        _positive_seconds(key, value.run_every.total_seconds())
        result = value
    elif isinstance(value, rrule):
        result = value
    else:
        raise _invalid(
            key,
            "schedule",
            f"unsupported schedule type {type(value).__name__} (use {_SUPPORTED})",
        )
    try:
        decoded = json.loads(json.dumps(result, cls=RedBeatJSONEncoder), cls=RedBeatJSONDecoder)
    except Exception as exc:
        raise _invalid(key, "schedule", f"cannot be stored as RedBeat JSON: {exc}") from None
    if not isinstance(decoded, BaseSchedule):
        raise _invalid(key, "schedule", f"does not decode back to a schedule: {decoded!r}")
    return result


def _check_expected(name: str, expected_version: int | None) -> None:
    if expected_version is None:
        return
    if (
        isinstance(expected_version, bool)
        or not isinstance(expected_version, int)
        or expected_version < 0
    ):
        raise _invalid(
            name, "expected_version", f"must be None or an int >= 0, got {expected_version!r}"
        )


# -- values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EntrySpec:
    """The definition of one entry, validated on construction (raises InvalidEntry).

    Build it from loose input with :meth:`build`; write it with :meth:`Schedule.put`.
    """

    name: str
    task: str
    schedule: BaseSchedule
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True

    def __post_init__(self) -> None:
        name = check_name(self.name)
        if not isinstance(self.task, str) or not self.task.strip():
            raise _invalid(name, "task", f"must be a non-empty task name, got {self.task!r}")
        object.__setattr__(self, "schedule", to_schedule(self.schedule, name))
        if isinstance(self.args, str | bytes | Mapping) or not isinstance(self.args, Iterable):
            raise _invalid(name, "args", f"must be a list or tuple, got {self.args!r}")
        args = tuple(self.args)
        _check_json(name, "args", args)
        object.__setattr__(self, "args", args)
        for part in ("kwargs", "options"):
            value = getattr(self, part)
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise _invalid(name, part, f"must be a mapping, got {value!r}")
            _check_json(name, part, value)
            object.__setattr__(self, part, dict(value))
        if not isinstance(self.enabled, bool):
            raise _invalid(name, "enabled", f"must be True or False, got {self.enabled!r}")

    @classmethod
    def build(
        cls,
        name: str,
        task: str,
        schedule: ScheduleLike,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        enabled: bool = True,
    ) -> EntrySpec:
        """An EntrySpec from any accepted schedule form (see :data:`ScheduleLike`)."""
        return cls(
            name=name,
            task=task,
            schedule=schedule,  # converted in __post_init__
            args=args,  # type: ignore[arg-type]
            kwargs=kwargs,  # type: ignore[arg-type]
            options=options,  # type: ignore[arg-type]
            enabled=enabled,
        )

    def definition(self) -> str:
        """RedBeat's ``definition`` JSON for this entry (sorted keys)."""
        return encode_definition(
            self.name,
            self.task,
            self.schedule,
            self.args,
            self.kwargs,
            self.options,
            self.enabled,
        )


@dataclass(frozen=True)
class EntryInfo:
    """One entry as Redis holds it.

    ``version`` is 0 for an entry saved by stock RedBeat. ``next_run_at`` is the entry's
    score in the schedule ZSET (None when it will never run again); while a manual run is
    pending (``run_now_at``) that is the request time. Times are aware datetimes.
    """

    name: str
    task: str
    schedule: BaseSchedule
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    enabled: bool
    version: int
    last_run_at: datetime | None
    next_run_at: datetime | None
    total_run_count: int
    run_now_at: datetime | None = None

    @property
    def spec(self) -> EntrySpec:
        """The definition part, e.g. to change one field with :func:`dataclasses.replace`."""
        return EntrySpec(
            name=self.name,
            task=self.task,
            schedule=self.schedule,
            args=self.args,
            kwargs=self.kwargs,
            options=self.options,
            enabled=self.enabled,
        )


def _utc(ts: float | int | None) -> datetime | None:
    if ts is None or ts < 0:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc)


@dataclass(frozen=True)
class _State:
    """An entry's hash and score as read before a write, with Redis' clock."""

    now: datetime
    definition: str | None
    meta: str | None
    version: int
    run_now: str | None
    score: float | None


# -- the API ---------------------------------------------------------------------------


class Schedule:
    """Typed, versioned management of the entries of one Celery app's RedBeat schedule.

    Bound to ``app``'s RedBeat settings (``redbeat_redis_url``, ``redbeat_redis_options``,
    ``redbeat_key_prefix``). Stateless apart from its Redis client: safe to share between
    threads, and any number of processes may use it next to running beat replicas.
    ``client`` (``decode_responses=True``) replaces the one built from the settings.
    """

    def __init__(self, app: Any, *, client: Any = None) -> None:
        ensure_conf(app)
        self.app = app
        self.keys = Keys.from_app(app)
        self._owns_client = client is None
        if client is None:
            client = scheduler_client(app, Settings.from_app(app).socket_timeout)
            shared = get_redis(app)
            self._owns_client = client is not getattr(shared, "wrapped_connection", shared)
        self.client: Any = client
        self.scripts = Scripts(client)
        self._reserved = {
            self.keys.lease,
            self.keys.schedule,
            self.keys.statics,
            self.keys.fence,
            self.keys.pending,
        }

    def __repr__(self) -> str:
        return f"<Schedule prefix={self.keys.prefix!r}>"

    def close(self) -> None:
        """Close the Redis connections this object opened (not a client passed in)."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Schedule:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writes ------------------------------------------------------------------------

    def upsert(
        self,
        name: str,
        task: str,
        schedule: ScheduleLike,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        enabled: bool = True,
        expected_version: int | None = None,
    ) -> EntryInfo:
        """Create or update an entry; return it as written.

        ``expected_version``: None accepts any; ``0`` means "must not exist yet" (or be a
        stock RedBeat entry); otherwise the version read before. A mismatch raises
        VersionConflict and writes nothing. An unchanged definition writes nothing and
        keeps the version. ``last_run_at`` is never reset: a new schedule is due relative
        to the last run.
        """
        spec = EntrySpec.build(name, task, schedule, args, kwargs, options, enabled)
        return self.put(spec, expected_version=expected_version)

    def put(self, spec: EntrySpec, *, expected_version: int | None = None) -> EntryInfo:
        """:meth:`upsert` of a ready :class:`EntrySpec`."""
        _check_expected(spec.name, expected_version)
        key = self._key(spec.name)
        return self._write(key, spec, expected_version)

    def enable(self, name: str, *, expected_version: int | None = None) -> EntryInfo:
        """Enable an entry (a versioned change); its next run is recomputed from its last."""
        return self._set_enabled(name, True, expected_version)

    def disable(self, name: str, *, expected_version: int | None = None) -> EntryInfo:
        """Disable an entry (a versioned change); beat skips it until it is enabled."""
        return self._set_enabled(name, False, expected_version)

    def run_now(self, name: str, *, expected_version: int | None = None) -> datetime:
        """Have the leader send the entry once at its next tick; return the request time.

        The schedule, ``last_run_at`` and the version stay as they are. Requests made before
        the leader picks one up are sent once. A disabled entry is sent too.
        """
        _check_expected(name, expected_version)
        key = self._key(name)
        code, value = self.scripts.run_now(
            keys=[key, self.keys.schedule, self.keys.lease],
            args=["", "" if expected_version is None else expected_version],
        )
        code = int(code)
        if code == 2:
            raise EntryNotFound(name)
        if code == -1:
            raise VersionConflict(name, expected_version, int(value))
        requested = datetime.fromtimestamp(int(value), tz=timezone.utc)
        logger.info("schedule: requested a manual run of %r", name)
        return requested

    def delete(self, name: str, *, expected_version: int | None = None) -> int:
        """Remove an entry (definition, run metadata, schedule slot); return its version.

        Runs already claimed by the leader are still sent.
        """
        _check_expected(name, expected_version)
        key = self._key(name)
        code, version = self.scripts.remove(
            keys=[key, self.keys.schedule, self.keys.lease, self.keys.statics],
            args=["", "" if expected_version is None else expected_version, name],
        )
        code = int(code)
        if code == 2:
            raise EntryNotFound(name)
        if code == -1:
            raise VersionConflict(name, expected_version, int(version))
        logger.info("schedule: deleted entry %r (version %s)", name, version)
        return int(version)

    # -- reads -------------------------------------------------------------------------

    def get(self, name: str) -> EntryInfo:
        """The entry called ``name``; EntryNotFound if there is none, InvalidEntry if its
        hash cannot be decoded."""
        key = self._key(name)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hmget(key, "definition", "meta", "version", "run_now")
            pipe.zscore(self.keys.schedule, key)
            (definition, meta, version, run_now), score = pipe.execute()
        if definition is None:
            raise EntryNotFound(name)
        return self._info(key, name, definition, meta, version, run_now, score)

    def list(self, pattern: str = "*", *, page_size: int = 500) -> Iterator[EntryInfo]:
        """Entries whose name matches the glob ``pattern``, read page by page.

        Walks the schedule ZSET with ZSCAN (never KEYS); entries changed meanwhile may be
        seen in either state. Entries that cannot be decoded are logged and skipped.
        """
        if page_size < 1:
            raise ValueError(f"page_size must be positive, got {page_size!r}")
        match = re.sub(r"([*?\[\]\\])", r"\\\1", self.keys.prefix) + pattern
        seen: set[str] = set()
        cursor = 0
        while True:
            cursor, page = self.client.zscan(
                self.keys.schedule, cursor, match=match, count=page_size
            )
            members = [(key, score) for key, score in page if key not in seen]
            seen.update(key for key, _score in members)
            if members:
                with self.client.pipeline(transaction=False) as pipe:
                    for key, _score in members:
                        pipe.hmget(key, "definition", "meta", "version", "run_now")
                    rows = pipe.execute()
                for (key, score), (definition, meta, version, run_now) in zip(
                    members, rows, strict=True
                ):
                    if definition is None:
                        continue  # deleted meanwhile, or a slot the leader drops
                    try:
                        yield self._info(
                            key, self.keys.name_of(key), definition, meta, version, run_now, score
                        )
                    except InvalidEntry as exc:
                        logger.warning("schedule: skipping undecodable entry: %s", exc)
            if int(cursor) == 0:
                return

    # -- internals ---------------------------------------------------------------------

    def _key(self, name: str) -> str:
        key = self.keys.entry(check_name(name))
        if key in self._reserved:
            raise _invalid(name, "name", f"its key {key!r} is an internal key")
        return key

    def _info(
        self,
        key: str,
        name: str,
        definition: str,
        meta: str | None,
        version: str | None,
        run_now: str | None,
        score: float | None,
    ) -> EntryInfo:
        stored = decode_entry(
            key,
            name,
            -1.0 if score is None else float(score),
            definition,
            meta,
            version,
            app=self.app,
            run_now_raw=run_now,
        )
        return _from_stored(stored, None if score is None else float(score))

    def _read(self, key: str) -> _State:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.hmget(key, "definition", "meta", "version", "run_now")
            pipe.zscore(self.keys.schedule, key)
            (seconds, micros), (definition, meta, version, run_now), score = pipe.execute()
        now = datetime.fromtimestamp(seconds + micros / 1e6, tz=timezone.utc)
        try:
            version_number = int(version or 0)
        except ValueError:
            raise _invalid(key, "version", f"must be an integer, got {version!r}") from None
        return _State(
            now=now.astimezone(self.app.timezone),
            definition=definition,
            meta=meta,
            version=version_number,
            run_now=run_now,
            score=None if score is None else float(score),
        )

    def _score(self, spec: EntrySpec, state: _State, last_run_at: datetime | None) -> int:
        """Next due timestamp at Redis' ``now``, on a copy of the schedule (ours or
        the caller's object is never given a ``nowfun``)."""
        copy = json.loads(json.dumps(spec.schedule, cls=RedBeatJSONEncoder), cls=RedBeatJSONDecoder)
        schedule = maybe_schedule(copy, app=self.app)
        now = state.now
        schedule.nowfun = lambda: now
        score = next_score(schedule, last_run_at, now)
        if state.run_now:
            requested = int(float(state.run_now))
            if score < 0 or requested < score:
                score = requested  # upsert.lua does the same, atomically
        return score

    def _write(self, key: str, spec: EntrySpec, expected_version: int | None) -> EntryInfo:
        definition = spec.definition()
        for _attempt in range(_MAX_ATTEMPTS):
            state = self._read(key)
            last_run_at, total_run_count = decode_meta(key, state.meta)
            score = self._score(spec, state, last_run_at)
            code, version = self.scripts.upsert(
                keys=[key, self.keys.schedule, self.keys.lease, self.keys.statics],
                args=[
                    "",
                    definition,
                    "" if expected_version is None else expected_version,
                    score,
                    encode_meta(None),
                    "-" if state.meta is None else state.meta,
                    "",
                    "",
                ],
            )
            code = int(code)
            if code == -2:
                continue  # a claim moved the last run meanwhile: recompute the score
            if code == -1:
                raise VersionConflict(spec.name, expected_version, int(version))
            if code == 1:
                logger.info("schedule: wrote entry %r (version %s)", spec.name, version)
                next_run = _utc(score)
            else:
                next_run = _utc(state.score)
            return EntryInfo(
                name=spec.name,
                task=spec.task,
                schedule=spec.schedule,
                args=spec.args,
                kwargs=dict(spec.kwargs),
                options=dict(spec.options),
                enabled=spec.enabled,
                version=int(version),
                last_run_at=last_run_at,
                next_run_at=next_run,
                total_run_count=total_run_count,
                run_now_at=_utc(int(float(state.run_now))) if state.run_now else None,
            )
        raise SafeRedBeatError(
            f"entry {spec.name!r}: its run metadata changed on each of {_MAX_ATTEMPTS} attempts"
        )

    def _set_enabled(self, name: str, enabled: bool, expected_version: int | None) -> EntryInfo:
        _check_expected(name, expected_version)
        self._key(name)
        for _attempt in range(_MAX_ATTEMPTS):
            current = self.get(name)
            if expected_version is not None and expected_version != current.version:
                raise VersionConflict(name, expected_version, current.version)
            if current.enabled is enabled:
                return current
            spec = EntrySpec(
                name=current.name,
                task=current.task,
                schedule=current.schedule,
                args=current.args,
                kwargs=current.kwargs,
                options=current.options,
                enabled=enabled,
            )
            try:
                return self._write(self._key(name), spec, current.version)
            except VersionConflict:
                if expected_version is not None:
                    raise
                # changed by someone else since we read it: read again
        raise SafeRedBeatError(f"entry {name!r} changed on each of {_MAX_ATTEMPTS} attempts")


def _from_stored(stored: StoredEntry, score: float | None) -> EntryInfo:
    return EntryInfo(
        name=stored.name,
        task=stored.task,
        schedule=stored.schedule,
        args=tuple(stored.args),
        kwargs=stored.kwargs,
        options=stored.options,
        enabled=stored.enabled,
        version=int(stored.version),
        last_run_at=stored.last_run_at,
        next_run_at=_utc(score),
        total_run_count=stored.total_run_count,
        run_now_at=_utc(stored.run_now),
    )
