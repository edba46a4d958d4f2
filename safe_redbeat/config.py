"""Settings, read from the Celery app's configuration and validated once at start.

Every setting is a lowercase Celery setting prefixed ``safe_redbeat_``; under Django's
``CELERY_`` namespace the same setting is ``CELERY_SAFE_REDBEAT_...``. A setting present
with the value ``0`` or ``None`` is taken as given, never as "unset".
"""

from __future__ import annotations

import difflib
import math
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigurationError

__all__ = [
    "CATCH_UP_POLICIES",
    "DEPRECATED",
    "LOG_FORMATS",
    "REDBEAT_SETTINGS",
    "Settings",
    "default_instance_name",
    "unknown_settings",
]

PREFIX = "safe_redbeat_"
#: The most shards a schedule may have (``safe_redbeat_shards``).
MAX_SHARDS = 256
_UNSET = object()

#: ``safe_redbeat_log_format``: the scheduler's own lines as text, or as JSON objects.
LOG_FORMATS = ("text", "json")

#: ``run_once``: after an outage, a missed entry runs once now (Celery's behaviour).
#: ``skip``: an occurrence later than ``catch_up_grace_seconds`` is skipped, not sent.
CATCH_UP_POLICIES = ("run_once", "skip")
#: ``safe_redbeat_enqueue``: ``atomic`` claims and pushes each message onto its broker
#: queue in one fenced script (the broker is kombu's Redis transport on the schedule's
#: server); ``publish`` claims, then publishes through Celery's producer (any broker);
#: ``auto`` takes ``atomic`` where it is possible (see dispatch/enqueue.py).
ENQUEUE_MODES = ("auto", "atomic", "publish")

#: Deprecated settings and the ones that replace them (read for one more release).
DEPRECATED = {
    "safe_redbeat_metrics_port": "safe_redbeat_http_port",
    "safe_redbeat_metrics_addr": "safe_redbeat_http_addr",
}

#: The settings RedBeat 2.x reads (``RedBeatConfig``); safe_redbeat reads the same ones.
REDBEAT_SETTINGS = (
    "redbeat_redis_url",
    "redbeat_redis_use_ssl",
    "redbeat_redis_options",
    "redbeat_key_prefix",
    "redbeat_lock_key",
    "redbeat_lock_timeout",
)

#: Django settings of the django-celery-beat adapter (read from Django's settings, not
#: from Celery's): never reported as unknown when a project loads every Django setting.
_READ_ELSEWHERE = frozenset(
    {"safe_redbeat_celery_app", "safe_redbeat_write_through", "safe_redbeat_write_back_seconds"}
)


def default_instance_name() -> str:
    """``<host>:<pid>``, unique per process like Celery's worker node names; the host is
    ``$HOSTNAME`` (the pod name on Kubernetes) or the machine's host name."""
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Settings:
    """Validated safe_redbeat settings; build with :meth:`from_app` or directly in tests."""

    #: How long the lease lives in Redis after each renewal. A standby takes over at most
    #: this long (plus one ``retry_seconds``) after the leader dies without releasing.
    lease_seconds: float = 15.0
    #: The leader stops dispatching when it has not renewed for this long. Smaller than
    #: ``lease_seconds``, so a leader always stops before a standby may start.
    renew_seconds: float = 10.0
    #: How often the leader renews and a standby tries to acquire.
    retry_seconds: float = 2.0
    #: Upper bound of the exponential backoff used while Redis is failing.
    backoff_max_seconds: float = 30.0
    #: Socket timeout of the scheduler's own Redis connection; a stalled Redis fails a call
    #: after this long instead of hanging the tick. Must be below ``renew_seconds``;
    #: unset, ``min(5, renew_seconds / 2)``.
    socket_timeout: float | None = None
    #: Due entries read, claimed and published per batch (one claim script per batch).
    batch_size: int = 1000
    #: What to do with an occurrence missed during an outage; see ``CATCH_UP_POLICIES``.
    catch_up: str = "run_once"
    #: With ``catch_up="skip"``, how late an occurrence may be and still be sent.
    catch_up_grace_seconds: float = 60.0
    #: ``"package.module:function"`` returning the desired entries (see loader.py), or "".
    loader: str = ""
    #: How often the leader reconciles the loader's entries (and statics) with Redis.
    reconcile_seconds: float = 60.0
    #: A loader call that takes longer is abandoned; that round removes nothing.
    loader_timeout_seconds: float = 30.0
    #: Shown in the lease value, heartbeats, ``status`` and logs; unset, ``<host>:<pid>``
    #: (the host being ``$HOSTNAME``, the pod name on Kubernetes). Replicas are told apart
    #: by a token of their own, not by this name; a name two live replicas share is
    #: reported as an ERROR by both, in ``status`` and by ``health``.
    instance_name: str = ""
    #: Publish attempts of one message that fail on the message itself (bad options, a task
    #: refusing its arguments) before its record moves to the dead-letter hash.
    publish_attempts: int = 5
    #: Most records the dead-letter hash holds; past it, failing records stay pending.
    dead_letter_max: int = 10_000
    #: Most loader-owned entries one reconcile may remove; more are held until
    #: ``safe-redbeat sync --allow-removals``. Unset: half of the owned entries (an empty
    #: load always counts as too many).
    loader_max_removals: int | None = None
    #: Shards of the schedule, each with its own lease, so several replicas dispatch at
    #: once (layout.py). Used when Redis holds no layout yet; afterwards the layout stored
    #: in Redis wins and ``safe-redbeat reshard --to K`` changes it.
    shards: int = 1
    #: Serve ``/healthz``, ``/readyz`` and ``/metrics`` (the latter with the ``metrics``
    #: extra) over HTTP on this port from each replica; None: off, 0: any free port.
    http_port: int | None = None
    #: Address the HTTP server binds; None: ``metrics_addr`` (default ``"0.0.0.0"``).
    http_addr: str | None = None
    #: Deprecated name of ``http_port`` (used when ``http_port`` is unset).
    metrics_port: int | None = None
    #: Deprecated name of ``http_addr`` (used when ``http_addr`` is unset).
    metrics_addr: str = "0.0.0.0"
    #: ``/healthz`` fails when the beat loop is this many seconds later than it planned to
    #: tick (a tick that does not return, or a sleep past its time). Unset:
    #: ``max(3 * retry_seconds, renew_seconds)``, plus ``loader_timeout_seconds`` with a
    #: loader (a reconcile waits for the loader inside the tick).
    liveness_seconds: float | None = None
    #: ``"json"``: the scheduler's own lines and events as JSON objects (see jsonlog.py).
    log_format: str = "text"
    #: One INFO line (and JSON event ``occurrence_sent``) per occurrence the broker took;
    #: False for very large schedules.
    log_sent: bool = True
    #: How claimed occurrences reach the broker; see ``ENQUEUE_MODES``.
    enqueue: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_named", bool(self.instance_name))
        if not self.instance_name:
            object.__setattr__(self, "instance_name", default_instance_name())
        if self.socket_timeout is None:
            object.__setattr__(self, "socket_timeout", min(5.0, self.renew_seconds / 2))
        if self.liveness_seconds is None:
            stuck = max(3 * self.retry_seconds, self.renew_seconds)
            if self.loader:
                stuck += self.loader_timeout_seconds
            object.__setattr__(self, "liveness_seconds", stuck)
        object.__setattr__(self, "_notices", ())
        self.validate()

    @property
    def serve_port(self) -> int | None:
        """The HTTP server's port: ``http_port``, else the deprecated ``metrics_port``."""
        return self.http_port if self.http_port is not None else self.metrics_port

    @property
    def serve_addr(self) -> str:
        """The HTTP server's address: ``http_addr``, else the deprecated ``metrics_addr``."""
        return self.http_addr if self.http_addr is not None else self.metrics_addr

    @property
    def liveness_limit(self) -> float:
        """``liveness_seconds`` after defaulting (never None)."""
        assert self.liveness_seconds is not None  # set in __post_init__
        return self.liveness_seconds

    @property
    def notices(self) -> tuple[str, ...]:
        """What :meth:`from_mapping` found worth a WARNING at start-up: deprecated
        settings in use, and settings nobody reads (see :func:`unknown_settings`)."""
        return tuple(getattr(self, "_notices", ()))

    @property
    def instance_named(self) -> bool:
        """True if ``safe_redbeat_instance_name`` was set (not the per-process default)."""
        return bool(getattr(self, "_named", True))

    @property
    def socket_timeout_seconds(self) -> float:
        """``socket_timeout`` after defaulting (never None)."""
        assert self.socket_timeout is not None  # set in __post_init__
        return self.socket_timeout

    def max_removals(self, owned: int) -> int:
        """How many of ``owned`` loader entries one reconcile may remove."""
        if self.loader_max_removals is not None:
            return self.loader_max_removals
        return owned // 2

    @classmethod
    def from_app(cls, app: Any) -> Settings:
        """Read ``safe_redbeat_*`` settings from ``app.conf``; raise ConfigurationError."""
        return cls.from_mapping(app.conf, namespace=getattr(app, "namespace", None))

    @classmethod
    def from_mapping(cls, conf: Mapping[str, Any], *, namespace: str | None = None) -> Settings:
        """Read the settings from ``conf``; ``namespace`` is the app's (Django's ``CELERY``)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = PREFIX + f.name
            # ``get``, not ``in``: Celery resolves Django's CELERY_ prefix only on lookup
            value = conf.get(name, _UNSET)
            if value is _UNSET:
                continue
            values[f.name] = _coerce(name, value, _kind(f.name))
        settings = cls(**values)
        notices = []
        old = [name for name in DEPRECATED if name[len(PREFIX) :] in values]
        if old:
            notices.append(
                "deprecated settings: "
                + ", ".join(f"{name} (use {DEPRECATED[name]})" for name in old)
                + (
                    f"; {PREFIX}http_port is set, so {PREFIX}metrics_port is ignored"
                    if "http_port" in values and "metrics_port" in values
                    else ""
                )
            )
        unknown = unknown_settings(conf, namespace=namespace)
        if unknown:
            notices.append(
                "settings nobody reads (misspelled?): "
                + ", ".join(
                    name if hint is None else f"{name} (did you mean {hint}?)"
                    for name, hint in unknown
                )
            )
        object.__setattr__(settings, "_notices", tuple(notices))
        return settings

    def validate(self) -> None:
        for name in (
            "lease_seconds",
            "renew_seconds",
            "retry_seconds",
            "backoff_max_seconds",
            "socket_timeout",
            "catch_up_grace_seconds",
            "reconcile_seconds",
            "loader_timeout_seconds",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigurationError(
                    f"{PREFIX}{name} must be a positive number of seconds, got {value!r}",
                    PREFIX + name,
                )
        if not (self.lease_seconds > self.renew_seconds > 1.2 * self.retry_seconds):
            raise ConfigurationError(
                "lease settings must satisfy "
                f"{PREFIX}lease_seconds > {PREFIX}renew_seconds > 1.2 * {PREFIX}retry_seconds;"
                f" got lease={self.lease_seconds}, renew={self.renew_seconds},"
                f" retry={self.retry_seconds}",
                PREFIX + "lease_seconds",
                PREFIX + "renew_seconds",
                PREFIX + "retry_seconds",
            )
        if self.socket_timeout_seconds >= self.renew_seconds:
            raise ConfigurationError(
                f"{PREFIX}socket_timeout ({self.socket_timeout}) must be below "
                f"{PREFIX}renew_seconds ({self.renew_seconds}), or a stalled Redis call "
                "outlives the renew deadline",
                PREFIX + "socket_timeout",
                PREFIX + "renew_seconds",
            )
        if self.backoff_max_seconds < self.retry_seconds:
            raise ConfigurationError(
                f"{PREFIX}backoff_max_seconds ({self.backoff_max_seconds}) must be at least "
                f"{PREFIX}retry_seconds ({self.retry_seconds})",
                PREFIX + "backoff_max_seconds",
            )
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ConfigurationError(
                f"{PREFIX}shards must be an integer from 1 to {MAX_SHARDS}, got {self.shards!r}",
                PREFIX + "shards",
            )
        for name in ("batch_size", "publish_attempts", "dead_letter_max"):
            if getattr(self, name) < 1:
                raise ConfigurationError(
                    f"{PREFIX}{name} must be a positive integer, got {getattr(self, name)!r}",
                    PREFIX + name,
                )
        if self.loader_max_removals is not None and self.loader_max_removals < 0:
            raise ConfigurationError(
                f"{PREFIX}loader_max_removals must be unset or an integer >= 0, "
                f"got {self.loader_max_removals!r}",
                PREFIX + "loader_max_removals",
            )
        for name in ("http_port", "metrics_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 65535:
                raise ConfigurationError(
                    f"{PREFIX}{name} must be a TCP port number (0-65535) or None (off), "
                    f"got {port!r}",
                    PREFIX + name,
                )
        for name in ("http_addr", "metrics_addr"):
            addr = getattr(self, name)
            if addr is not None and not addr:
                raise ConfigurationError(
                    f"{PREFIX}{name} must be an address to bind, such as '0.0.0.0' or "
                    f"'127.0.0.1', got {addr!r}",
                    PREFIX + name,
                )
        if not math.isfinite(self.liveness_limit) or self.liveness_limit <= 0:
            raise ConfigurationError(
                f"{PREFIX}liveness_seconds must be a positive number of seconds, "
                f"got {self.liveness_seconds!r}",
                PREFIX + "liveness_seconds",
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigurationError(
                f"{PREFIX}log_format must be one of {', '.join(LOG_FORMATS)}, "
                f"got {self.log_format!r}",
                PREFIX + "log_format",
            )
        if self.enqueue not in ENQUEUE_MODES:
            raise ConfigurationError(
                f"{PREFIX}enqueue must be one of {', '.join(ENQUEUE_MODES)}, got {self.enqueue!r}",
                PREFIX + "enqueue",
            )
        if self.catch_up not in CATCH_UP_POLICIES:
            raise ConfigurationError(
                f"{PREFIX}catch_up must be one of {', '.join(CATCH_UP_POLICIES)}, "
                f"got {self.catch_up!r}",
                PREFIX + "catch_up",
            )


#: Settings that may be None (unset, then derived); the type of their values otherwise.
_OPTIONAL = {
    "socket_timeout": float,
    "loader_max_removals": int,
    "http_port": int,
    "http_addr": str,
    "metrics_port": int,
    "liveness_seconds": float,
}
#: Settings whose value must already be an int (no "9808" from a string)
_STRICT_INT = {"http_port", "metrics_port"}


def known_settings() -> tuple[str, ...]:
    """Every ``safe_redbeat_*`` setting, lowercase."""
    return tuple(PREFIX + f.name for f in fields(Settings))


def unknown_settings(
    conf: Mapping[str, Any], *, namespace: str | None = None
) -> list[tuple[str, str | None]]:
    """``safe_redbeat_*`` settings (and ``redbeat_*`` ones RedBeat does not read) in
    ``conf`` that nothing reads, each with the nearest known name (or None), as written.

    Under a namespace (Django's ``CELERY_``) names are compared without it and the hint is
    given with it. Without one, an uppercase ``SAFE_REDBEAT_...`` is not read by Celery
    either: its hint is the lowercase name.
    """
    prefix = f"{namespace}_" if namespace else ""
    known = {*known_settings(), *REDBEAT_SETTINGS}
    found: list[tuple[str, str | None]] = []
    for key in _keys(conf):
        if not isinstance(key, str):
            continue
        name = key[len(prefix) :] if prefix and key.upper().startswith(prefix.upper()) else key
        lower = name.lower()
        if not lower.startswith((PREFIX, "redbeat_")) or lower in _READ_ELSEWHERE:
            continue
        upper_unread = not prefix and lower.startswith(PREFIX) and name != lower
        if lower in known and not upper_unread:
            continue
        close = [lower] if lower in known else _nearest(lower)
        hint = None
        if close:
            hint = close[0] if not prefix else _as_written(prefix, key, close[0])
        found.append((key, hint))
    return sorted(found)


def _nearest(name: str) -> list[str]:
    """The known setting nearest to ``name`` (compared without the common prefix)."""
    start = PREFIX if name.startswith(PREFIX) else "redbeat_"
    pool = (
        [n for n in known_settings() if n not in DEPRECATED]
        if start == PREFIX
        else REDBEAT_SETTINGS
    )
    close = difflib.get_close_matches(name[len(start) :], [n[len(start) :] for n in pool], n=1)
    return [start + close[0]] if close else []


def _keys(conf: Mapping[str, Any]) -> Iterable[Any]:
    try:
        return list(conf.keys())
    except Exception:  # a conf that cannot list its keys: nothing to say
        return []


def _as_written(prefix: str, key: str, name: str) -> str:
    """``name`` spelled as ``key`` is: behind the namespace, in its case."""
    return (prefix + name).upper() if key.isupper() else prefix + name


def _kind(field_name: str) -> type:
    if field_name in _OPTIONAL:
        return _OPTIONAL[field_name]
    default = next(f.default for f in fields(Settings) if f.name == field_name)
    return type(default)


def _coerce(name: str, value: Any, kind: type) -> Any:
    """Convert a configured value to ``kind``, or name the setting."""
    if value is None and name[len(PREFIX) :] in _OPTIONAL:
        return None
    if kind is str:
        if not isinstance(value, str):
            raise ConfigurationError(f"{name} must be a string, got {value!r}", name)
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigurationError(f"{name} must be True or False, got {value!r}", name)
        return value
    if isinstance(value, bool) or value is None:
        raise ConfigurationError(f"{name} must be a number, got {value!r}", name)
    if name[len(PREFIX) :] in _STRICT_INT and not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}", name)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number, got {value!r}", name) from None
    if kind is int:
        if number != int(number):
            raise ConfigurationError(f"{name} must be an integer, got {value!r}", name)
        return int(number)
    return number
