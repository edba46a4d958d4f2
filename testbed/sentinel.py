"""A throwaway Redis Sentinel deployment (tests, the chaos harness; 127.0.0.1 only).

One primary, one replica and ``sentinels`` sentinel processes monitoring the primary under
one service name. :meth:`SentinelDeployment.fail_primary` SIGKILLs the primary and waits
until every sentinel names the replica as the new primary; :meth:`SentinelDeployment.rejoin`
starts the dead primary again, empty, as a replica of the new one (so that the next
``fail_primary`` has a replica to promote). Every process is killed by PID at cleanup.

Sentinel mode is the server binary started as ``<binary> <config> --sentinel`` (Redis and
Valkey both ship it in ``redis-server``/``valkey-server``).
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from testbed.process import HOST, START_TIMEOUT, ServerProcess, free_port
from testbed.redis_server import RedisServer, find_redis_server

SERVICE = "srb-primary"
#: How long the sentinels may take to see each other, the primary and its replica.
DISCOVERY_TIMEOUT = 20.0
#: How long a promotion may take after the primary died.
PROMOTION_TIMEOUT = 30.0


def _info(client: redis.Redis, section: str) -> dict[str, Any]:
    info: dict[str, Any] = client.info(section)
    return info


class SentinelProcess(ServerProcess):
    """One sentinel: a config file it may rewrite, a port, a log."""

    kind = "sentinel"

    def __init__(
        self,
        workdir: Path,
        *,
        service: str,
        primary_port: int,
        quorum: int,
        down_after_ms: int,
        failover_timeout_ms: int,
    ) -> None:
        port = free_port()
        workdir = workdir / f"sentinel-{port}"
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            binary=find_redis_server(),
            port=port,
            workdir=workdir,
            log_path=workdir / "sentinel.log",
        )
        self.config_path = self.workdir / "sentinel.conf"
        self.config_path.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {HOST}",
                    "daemonize no",
                    f'dir "{self.workdir}"',
                    f"sentinel monitor {service} {HOST} {primary_port} {quorum}",
                    f"sentinel down-after-milliseconds {service} {down_after_ms}",
                    f"sentinel failover-timeout {service} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {service} 1",
                    "",
                ]
            )
        )

    def argv(self) -> list[str]:
        return [self.binary, str(self.config_path), "--sentinel"]

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=HOST, port=self.port, decode_responses=True, socket_timeout=1,
            socket_connect_timeout=1,
        )  # fmt: skip


@dataclass
class Promotion:
    """What one :meth:`SentinelDeployment.fail_primary` did and measured."""

    old_port: int
    new_port: int
    #: wall-clock time of the SIGKILL
    killed_at: float
    #: wall-clock time at which every sentinel named the new primary
    promoted_at: float
    #: seconds the replica's link to the primary was cut before the primary died
    replica_lag: float
    #: primary's replication offset right before the kill, the promoted replica's after
    primary_offset: int
    replica_offset: int
    #: ``snapshot`` of the old primary right before the kill
    before: dict[str, Any] = field(default_factory=dict)
    #: ``snapshot`` of the replica after the kill, before its promotion: the data it is
    #: promoted with
    after: dict[str, Any] = field(default_factory=dict)

    @property
    def promotion_seconds(self) -> float:
        return self.promoted_at - self.killed_at

    @property
    def lost_bytes(self) -> int:
        """Replication stream the primary had written and the promoted replica never got."""
        return max(self.primary_offset - self.replica_offset, 0)


class SentinelDeployment:
    """``with SentinelDeployment() as sd:`` a primary, a replica and 3 sentinels.

    ``down_after_ms`` defaults to 1500: at 1000 (the sentinels' own ping and reconnect
    period) they sometimes declared the primary they had just promoted down a second
    later, and failed over again (about once in 20 failovers here).
    """

    def __init__(
        self,
        *,
        service: str = SERVICE,
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1500,
        failover_timeout_ms: int = 5000,
        workdir: Path | None = None,
    ) -> None:
        self.service = service
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self._owns_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="sentinel-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.primary = RedisServer(workdir=self.workdir / "node-a")
        self.replica = RedisServer(workdir=self.workdir / "node-b")
        self.sentinels = [
            SentinelProcess(
                self.workdir,
                service=service,
                primary_port=self.primary.port,
                quorum=quorum,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
            )
            for _ in range(sentinels)
        ]
        self.promotions: list[Promotion] = []

    # -- addresses ---------------------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(HOST, s.port) for s in self.sentinels]

    @property
    def url(self) -> str:
        """The ``redbeat_redis_url`` form (RedBeat only checks the scheme)."""
        return f"redis-sentinel://{HOST}:{self.sentinels[0].port}/0"

    def redbeat_options(self, socket_timeout: float) -> dict[str, Any]:
        """``redbeat_redis_options`` for this deployment (JSON-serialisable)."""
        return {
            "sentinels": [[host, port] for host, port in self.sentinel_addresses],
            "service_name": self.service,
            "socket_timeout": socket_timeout,
        }

    def client(self, socket_timeout: float = 2.0) -> redis.Redis:
        """A client of the current primary, found through the sentinels (no retries)."""
        bounded: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
        }
        sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            self.sentinel_addresses,
            sentinel_kwargs={**bounded, "retry": Retry(NoBackoff(), 0)},
            decode_responses=True,
            **bounded,
        )
        client: redis.Redis = sentinel.master_for(self.service)  # type: ignore[no-untyped-call,unused-ignore]
        return client

    def switches(self) -> int:
        """Failovers the sentinels completed so far (``+switch-master`` in their logs)."""
        return max(s.log().count("+switch-master") for s in self.sentinels)

    def primary_port(self) -> int | None:
        """The primary every sentinel agrees on, or None while they disagree or fail."""
        ports = set()
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                address = client.sentinel_get_master_addr_by_name(self.service)
            except redis.RedisError:
                return None
            finally:
                client.close()
            if not isinstance(address, (tuple, list)) or len(address) != 2:
                return None
            ports.add(int(address[1]))
        return ports.pop() if len(ports) == 1 else None

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> SentinelDeployment:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
        if self._owns_workdir and exc_type is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def start(self) -> SentinelDeployment:
        for server in (self.primary, self.replica):
            _start_node(server)
        self._follow(self.replica, self.primary)
        for sentinel in self.sentinels:
            sentinel.start()
        self._wait_discovered(self.primary, self.replica)
        return self

    def cleanup(self) -> None:
        """SIGKILL every process this deployment started (by PID)."""
        for sentinel in self.sentinels:
            sentinel.kill()
        self.primary.kill()
        self.replica.kill()

    def logs(self, lines: int = 40) -> str:
        parts = []
        for sentinel in self.sentinels:
            tail = "\n".join(sentinel.log().splitlines()[-lines:])
            parts.append(f"==== sentinel {sentinel.port} pid={sentinel.pid}\n{tail}")
        for name, server in (("primary", self.primary), ("replica", self.replica)):
            tail = "\n".join(server.log().splitlines()[-lines:])
            parts.append(f"==== {name} {server.port}\n{tail}")
        return "\n".join(parts)

    def _follow(self, replica: RedisServer, primary: RedisServer) -> None:
        client = replica.client()
        try:
            client.replicaof(HOST, primary.port)
            _wait(
                lambda: _info(client, "replication").get("master_link_status") == "up",
                START_TIMEOUT,
                lambda: f"replica {replica.port} never synced with {primary.port}",
            )
        finally:
            client.close()

    def _wait_discovered(
        self, primary: RedisServer, replica: RedisServer, *, link_reported: bool = True
    ) -> None:
        """Until every sentinel sees the primary, its replica and the other sentinels.

        ``link_reported``: also until they saw the replica's link up in its INFO (which
        sentinels only refresh every 10 s outside a failover).
        """
        others = len(self.sentinels) - 1

        def ready() -> bool:
            for sentinel in self.sentinels:
                client = sentinel.client()
                try:
                    state = client.sentinel_master(self.service)
                    replicas = client.sentinel_slaves(self.service)
                except redis.RedisError:
                    return False
                finally:
                    client.close()
                if not isinstance(state, dict) or not isinstance(replicas, list):
                    return False
                if int(state["port"]) != primary.port or state["is_sdown"] or state["is_odown"]:
                    return False
                if int(state["num-other-sentinels"]) < others:
                    return False
                if not any(
                    int(r["port"]) == replica.port and not r["is_sdown"] and not r["is_odown"]
                    and (r.get("master-link-status") == "ok" or not link_reported)
                    for r in replicas
                ):  # fmt: skip
                    return False
            return True

        _wait(ready, DISCOVERY_TIMEOUT, lambda: f"sentinels saw no deployment:\n{self.logs()}")

    # -- faults ------------------------------------------------------------------------

    def fail_primary(
        self,
        *,
        replica_lag: float = 0.0,
        snapshot: Callable[[redis.Redis], dict[str, Any]] | None = None,
    ) -> Promotion:
        """SIGKILL the primary; return once every sentinel names the replica instead.

        ``replica_lag`` > 0 first cuts the replica off the replication stream for that
        many seconds (SIGSTOP the replica, ``CLIENT KILL TYPE replica`` on the primary,
        so nothing more reaches it even through the kernel's socket buffers), then kills
        the primary and resumes the replica: every write of the last ``replica_lag``
        seconds is lost, as with a replica that lagged behind when the primary died. Keep
        it below ``down_after_ms``, or the sentinels find the frozen replica down too.
        ``snapshot(client)`` is read on the old primary right before the kill and on the
        replica after the kill, before its promotion (nobody writes to it then).
        """
        self._sync_roles()
        old, new = self.primary, self.replica
        admin = old.client()
        try:
            if replica_lag > 0:
                new.send_signal(signal.SIGSTOP)
                admin.client_kill_filter(_type="replica")
                time.sleep(replica_lag)
            before = snapshot(admin) if snapshot is not None else {}
            primary_offset = int(_info(admin, "replication")["master_repl_offset"])
        except BaseException:
            new.send_signal(signal.SIGCONT)
            raise
        finally:
            admin.close()
        old.kill()
        killed_at = time.time()
        if replica_lag > 0:
            new.send_signal(signal.SIGCONT)
        client = new.client()
        try:
            # still a replica of the dead primary, so nobody writes to it: once it has
            # applied what reached it, this is the state it will be promoted with
            replica_offset = _settled_offset(client)
            after = snapshot(client) if snapshot is not None else {}
        finally:
            client.close()
        _wait(
            lambda: self.primary_port() == new.port,
            PROMOTION_TIMEOUT,
            lambda: f"no promotion of {new.port} in {PROMOTION_TIMEOUT}s:\n{self.logs()}",
        )
        promoted_at = time.time()
        self.primary, self.replica = new, old
        promotion = Promotion(
            old_port=old.port,
            new_port=new.port,
            killed_at=killed_at,
            promoted_at=promoted_at,
            replica_lag=replica_lag,
            primary_offset=primary_offset,
            replica_offset=replica_offset,
            before=before,
            after=after,
        )
        self.promotions.append(promotion)
        return promotion

    def rejoin(self) -> None:
        """Start the failed primary again, empty, as a replica of the new primary.

        As a restarted node configured with ``replicaof`` would (the sentinels would
        convert it too, but only at their next 10-second INFO round). Returns once every
        sentinel sees it up again.
        """
        self._sync_roles()
        for leftover in self.replica.workdir.glob("*.rdb"):
            leftover.unlink()  # written by its last full sync: it comes back empty
        _start_node(self.replica)
        self._follow(self.replica, self.primary)
        self._wait_discovered(self.primary, self.replica, link_reported=False)

    def _sync_roles(self) -> None:
        """Follow a failover the sentinels made on their own (``primary`` is theirs)."""
        port = self.primary_port()
        if port == self.replica.port:
            self.primary, self.replica = self.replica, self.primary


def _settled_offset(client: redis.Redis, timeout: float = 3.0) -> int:
    """The replication offset once two reads 100 ms apart agree."""
    deadline = time.monotonic() + timeout
    offset = int(_info(client, "replication")["master_repl_offset"])
    while time.monotonic() < deadline:
        time.sleep(0.1)
        again = int(_info(client, "replication")["master_repl_offset"])
        if again == offset:
            break
        offset = again
    return offset


def _start_node(server: RedisServer) -> None:
    server.start()
    client = server.client()
    try:
        # a full sync starts at once (the default waits 5 s for more replicas to join)
        client.config_set("repl-diskless-sync-delay", 0)
    finally:
        client.close()


def _wait(predicate: Callable[[], bool], timeout: float, failure: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(failure())
        time.sleep(0.02)
