"""What every command needs: the Celery app, its settings, one Redis client; exit codes."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config import Settings
from ..schedule import Schedule
from ..store.binding import Binding
from ..store.keys import Keys
from ..store.layout import InvalidLayout, Layout, read_layout
from ..store.scripts import Scripts

__all__ = ["Args", "CLIError", "Context", "bind_app", "load_app", "open_context", "redis_error"]

EXIT_OK = 0
#: ``health``: the check failed; ``sync``: the load had errors (nothing was removed);
#: ``import``: some entries could not be imported (the others were).
EXIT_UNHEALTHY = 1
#: Bad arguments (a usage line and the problem), or a file that cannot be read, written
#: or used (``export``, ``import``).
EXIT_USAGE = 2
#: Redis could not be reached, or answered with an error.
EXIT_REDIS = 3
#: The Celery app could not be loaded, or its configuration is invalid or incomplete.
EXIT_APP = 4
#: No entry of that name.
EXIT_NOT_FOUND = 5
#: ``--expected-version`` (or ``add`` of an existing name) did not match Redis.
EXIT_CONFLICT = 6
#: The entry the arguments describe is invalid (bad cron expression, name, ...).
EXIT_INVALID = 7
#: The schedule is being resharded, or a reshard could not start (a lease not released).
EXIT_RESHARD = 8

#: What each exit code means, in the words ``--help`` prints.
EXIT_MEANINGS = {
    EXIT_OK: "ok",
    EXIT_UNHEALTHY: "unhealthy (health), load errors (sync), entries not imported (import)",
    EXIT_USAGE: "usage: bad arguments, or a file that cannot be used (export, import)",
    EXIT_REDIS: "Redis unreachable or failing",
    EXIT_APP: "app or configuration",
    EXIT_NOT_FOUND: "entry not found",
    EXIT_CONFLICT: "version conflict",
    EXIT_INVALID: "invalid entry",
    EXIT_RESHARD: "resharding (a move under way or refused)",
}


class CLIError(Exception):
    """Reported as one line on stderr; ``kind`` and ``extra`` also go to ``--json``."""

    def __init__(self, code: int, kind: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind
        self.message = message
        self.extra = extra


class Args(SimpleNamespace):
    """A command's options by name (``args.name``, ``args.every``), plus ``command`` (its
    name), ``json`` and ``timeout`` (given before or after the command name)."""


@dataclass
class Context:
    app: Any
    settings: Settings
    keys: Keys
    client: Any
    #: the Redis URL with its password masked, for messages
    url: str

    def schedule(self) -> Schedule:
        return Schedule(self.app, client=self.client)

    def scripts(self) -> Scripts:
        return Scripts(self.client, self.keys)

    def layout(self) -> Layout:
        """The shard layout stored in Redis (absent: one shard, RedBeat's own keys)."""
        try:
            return read_layout(self.client, self.keys)
        except InvalidLayout as exc:
            raise CLIError(EXIT_REDIS, "invalid_layout", str(exc)) from None

    def close(self) -> None:
        self.client.close()


def load_app(name: str) -> Any:
    """Import the Celery app as ``celery -A`` does (``proj``, ``proj.celery``,
    ``proj.celery:app``), with the current directory on ``sys.path``; read its config."""
    from celery.app.utils import find_app

    _cwd_on_path()
    what = f"cannot load the Celery app {name!r}"
    try:
        app = find_app(name)
    except ModuleNotFoundError as exc:
        raise CLIError(EXIT_APP, "app", f"{what}: no module named {exc.name!r}") from None
    except Exception as exc:  # user code: anything can go wrong on import
        raise CLIError(EXIT_APP, "app", f"{what}: {type(exc).__name__}: {exc}") from None
    return bind_app(app, what)


def bind_app(app: Any, what: str = "cannot use the Celery app") -> Any:
    """``app`` (a Celery app: the one ``celery -A`` loaded) with its configuration read."""
    from celery import Celery

    from ..store.connection import redbeat_conf

    _cwd_on_path()
    if not isinstance(app, Celery):
        raise CLIError(EXIT_APP, "app", f"{what}: it is a {type(app).__name__}, not a Celery app")
    try:
        redbeat_conf(app)  # reads the configuration (e.g. Django settings) now
    except Exception as exc:
        raise CLIError(
            EXIT_APP, "app", f"{what}: its configuration: {type(exc).__name__}: {exc}"
        ) from None
    return app


def _cwd_on_path() -> None:
    """The current directory on ``sys.path``, as ``celery`` has it: also for the loader
    module ``sync`` imports later."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def open_context(app: Any, timeout: float | None) -> Context:
    """Load the app (a name as ``-A`` takes it, or a Celery app); ``timeout`` (default
    ``safe_redbeat_socket_timeout``) bounds every Redis call. No connection is made yet."""
    app = load_app(app) if isinstance(app, str) else bind_app(app)
    binding = Binding.of(app, socket_timeout=timeout)
    binding.check_cluster_keys()  # ConfigurationError: reported as a configuration error
    try:
        client = binding.client()
    except ValueError as exc:  # e.g. an unknown URL scheme
        raise CLIError(
            EXIT_APP, "configuration", f"redbeat_redis_url {binding.url}: {exc}"
        ) from None
    return Context(
        app=app, settings=binding.settings, keys=binding.keys, client=client, url=binding.url
    )


def redis_error(exc: RedisError, url: str) -> CLIError:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return CLIError(EXIT_REDIS, "redis_unreachable", f"cannot reach Redis at {url}: {text}")
    return CLIError(EXIT_REDIS, "redis_error", f"Redis at {url} answered: {text}")
