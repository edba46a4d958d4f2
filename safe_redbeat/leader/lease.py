"""The leader lease: RedBeat's lock key, taken without blocking and renewed on a deadline.

Timeline of the three durations (client-go's leader election, same meaning)::

    t0            t0+retry        t0+renew             t0+lease
    |-- renewed --|-- renew again --|-- leader stops ----|-- standby may take over
                                      dispatching if no
                                      renewal succeeded

A leader renews every ``retry_seconds``. If no renewal succeeded for ``renew_seconds`` it
stops dispatching, which is before Redis lets the key expire (``lease_seconds`` after the
last renewal reached Redis), so two replicas never believe they lead at the same moment.
Every write the leader makes is still checked by Redis against the token (see
``claim.lua``): the deadline keeps the leader polite, the token keeps it correct.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import Settings
from ..errors import LeaseLost, LossCause
from ..store.keys import Keys
from ..store.scripts import RenewCode, Scripts

__all__ = ["Holder", "Lease", "parse_token"]


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) the lease, decoded from its value."""

    fence: int | None
    host: str
    pid: int | None
    name: str

    def describe(self) -> str:
        if self.fence is None:
            return f"{self.name} (not a safe_redbeat token)"
        return f"{self.name} (host {self.host}, pid {self.pid}, fence {self.fence})"


def parse_token(value: str) -> Holder:
    """Decode a lease value; a stock RedBeat lock token decodes with ``fence=None``."""
    fence_text, _, holder_json = value.partition(" ")
    try:
        holder = json.loads(holder_json)
        return Holder(
            fence=int(fence_text),
            host=str(holder.get("host", "")),
            pid=int(holder["pid"]) if holder.get("pid") is not None else None,
            name=str(holder.get("name", "")),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return Holder(fence=None, host="", pid=None, name=value[:64])


class Lease:
    """One replica's view of the lease. Not thread-safe; the beat loop owns it."""

    def __init__(
        self,
        client: Any,
        keys: Keys,
        settings: Settings,
        *,
        scripts: Scripts | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.scripts = scripts or Scripts(client, keys)
        self.monotonic = monotonic
        self.token: str | None = None
        self.fence: int | None = None
        #: monotonic time at which the last successful acquire/renew was *sent*.
        self.renewed_at = 0.0
        self.acquired_at = 0.0
        self._holder_json = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "name": settings.instance_name,
            },
            separators=(",", ":"),
        )

    @property
    def held(self) -> bool:
        return self.token is not None

    @property
    def _lease_ms(self) -> int:
        return int(self.settings.lease_seconds * 1000)

    def deadline(self) -> float:
        """Monotonic time after which this replica must not dispatch without renewing."""
        return self.renewed_at + self.settings.renew_seconds

    def renew_at(self) -> float:
        """Monotonic time of the next planned renewal."""
        return self.renewed_at + self.settings.retry_seconds

    def valid(self) -> bool:
        return self.held and self.monotonic() < self.deadline()

    def try_acquire(self) -> Holder | None:
        """Take the lease if it is free. Return None on success, else the current holder."""
        holder = json.loads(self._holder_json)
        holder["nonce"] = uuid.uuid4().hex[:12]
        started = self.monotonic()
        result = self.scripts.acquire(json.dumps(holder, separators=(",", ":")), self._lease_ms)
        if not result.acquired:
            return parse_token(result.value)
        self.token = result.value
        self.fence = result.fence
        self.renewed_at = self.acquired_at = started
        return None

    def renew(self) -> None:
        """Extend the lease to a full lease time. Raise LeaseLost if it is not ours.

        Redis errors propagate: the caller keeps leading until :meth:`deadline` passes.
        """
        if self.token is None:
            raise LeaseLost("not holding the lease")
        started = self.monotonic()
        result = self.scripts.renew(self.token, self._lease_ms)
        if result.code is RenewCode.RENEWED:
            self.renewed_at = started
            return
        if result.code is RenewCode.GONE:
            self.drop()
            raise LeaseLost(
                "the lease key is gone (deleted, expired or Redis lost its data)",
                LossCause.KEY_GONE,
            )
        self.drop()
        holder = parse_token(str(result.current)).describe()
        raise LeaseLost(f"the lease is held by {holder}", LossCause.TAKEN)

    def release(self) -> bool:
        """Give the lease up if it is still ours; True if Redis deleted it."""
        token, self.token = self.token, None
        if token is None:
            return False
        return self.scripts.release(token)

    def drop(self) -> None:
        """Forget the lease locally (it was lost); Redis is not touched."""
        self.token = None
        self.fence = None
