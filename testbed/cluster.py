"""A throwaway Redis Cluster (tests, benchmarks): 3 primaries with one replica each, on 127.0.0.1.

Every node is the suite's server binary (``find_redis_server``) started with
``--cluster-enabled yes`` and its own config file; the cluster is formed from Python, the
way ``redis-cli --cluster create`` does it: ``CLUSTER ADDSLOTSRANGE`` on each primary,
``CLUSTER MEET`` from the first node, ``CLUSTER REPLICATE`` on each replica, then wait until
every node reports ``cluster_state:ok`` and agrees on who serves which slot.

``--cluster-node-timeout`` is small (1 s), so a killed primary is marked failed and its
replica promotes itself within a few seconds. :meth:`LocalCluster.kill` SIGKILLs a node,
:meth:`LocalCluster.wait_promoted` waits for the promotion, :meth:`LocalCluster.rejoin`
starts the dead node again (it comes back as a replica of its promoted replica). Every
process is stopped by PID at :meth:`LocalCluster.stop`.

Cluster mode has only database 0: tests isolate themselves by a hash-tagged key prefix
(:func:`unique_prefix`) and delete that prefix's keys afterwards (:meth:`delete_prefix`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from testbed.process import HOST, ServerProcess, free_port
from testbed.redis_server import find_redis_server

#: Slots are 0..16383; primary i serves an equal third.
SLOTS = 16384
#: How long forming the cluster may take (measured: about 2 s).
FORM_TIMEOUT = 30.0
#: How long a replica may take to promote itself after its primary died.
PROMOTION_TIMEOUT = 30.0
NODE_TIMEOUT_MS = 1000

_PREFIXES = itertools.count(1)


def unique_prefix() -> str:
    """A fresh hash-tagged ``redbeat_key_prefix`` (``{t<pid>-<n>}:``): one slot, one test."""
    return f"{{t{os.getpid()}-{next(_PREFIXES)}}}:"


class Node(ServerProcess):
    """One cluster node: a server process, its client port and its cluster bus port."""

    kind = "node"

    def __init__(self, workdir: Path, binary: str, node_timeout_ms: int) -> None:
        port = free_port()
        super().__init__(
            binary=binary, port=port, workdir=workdir, log_path=workdir / f"node-{port}.log"
        )
        self.node_timeout_ms = node_timeout_ms
        self.bus_port = free_port()
        #: ``CLUSTER MYID``, read once the node answers
        self.node_id = ""

    @property
    def name(self) -> str:
        return f"{HOST}:{self.port}"

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(
            host=HOST,
            port=self.port,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def argv(self) -> list[str]:
        return [
            self.binary, "--port", str(self.port), "--bind", HOST,
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", str(self.workdir),
            "--cluster-enabled", "yes",
            "--cluster-config-file", f"nodes-{self.port}.conf",
            "--cluster-port", str(self.bus_port),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # a replica cut off from its dead primary may always promote itself
            "--cluster-replica-validity-factor", "0",
            # a replica's first sync starts at once (the default waits 5 s for more)
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip

    def ready(self, probe: redis.Redis) -> bool:
        if not probe.ping():
            return False
        self.node_id = str(probe.cluster("MYID"))
        return True


class LocalCluster:
    """``primaries`` primaries with ``replicas`` replicas each, formed and ready."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
    ) -> None:
        self._owns_workdir = workdir is None
        self.workdir = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        binary = find_redis_server()
        count = primaries * (1 + replicas)
        self.nodes = [Node(self.workdir, binary, node_timeout_ms) for _ in range(count)]
        self.n_primaries = primaries
        #: seconds from the first spawn to a cluster every node reports ready
        self.formed_in: float | None = None

    # -- addresses -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://`` URL of the first node (a startup node; any node would do)."""
        return f"redis://{HOST}:{self.nodes[0].port}/0"

    @property
    def startup_nodes(self) -> list[dict[str, str | int]]:
        return [{"host": HOST, "port": node.port} for node in self.nodes]

    def client(self, timeout: float = 2.0) -> RedisCluster:
        """A cluster client for the test itself (bounded, decoded, no retries)."""
        return RedisCluster(
            startup_nodes=[
                ClusterNode(HOST, node.port)  # type: ignore[no-untyped-call]
                for node in self.nodes
                if node.running()
            ],
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> LocalCluster:
        started = time.monotonic()
        try:
            for node in self.nodes:
                node.spawn()
            for node in self.nodes:
                node.wait_ready()
            self._form()
            self.wait_ok(FORM_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.formed_in = time.monotonic() - started
        return self

    def _form(self) -> None:
        primaries, replicas = self.nodes[: self.n_primaries], self.nodes[self.n_primaries :]
        bounds = [SLOTS * i // len(primaries) for i in range(len(primaries) + 1)]
        for i, node in enumerate(primaries):
            with node.client() as c:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
        with self.nodes[0].client() as first:
            for node in self.nodes[1:]:
                first.execute_command("CLUSTER", "MEET", HOST, node.port, node.bus_port)
        deadline = time.monotonic() + FORM_TIMEOUT
        for i, node in enumerate(replicas):
            primary = primaries[i % len(primaries)]
            with node.client() as c:
                while True:  # "Unknown node" until the MEET gossip reached this node
                    try:
                        c.execute_command("CLUSTER", "REPLICATE", primary.node_id)
                        break
                    except redis.ResponseError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)

    def _view(self, node: Node) -> tuple[str, frozenset[tuple[int, int, str]], str]:
        """(cluster_state, {(first slot, last slot, primary port)}, master_link_status)."""
        with node.client(1.0) as c:
            info = c.execute_command("CLUSTER INFO")
            slots = frozenset(
                (int(s[0]), int(s[1]), str(s[2][1])) for s in c.execute_command("CLUSTER SLOTS")
            )
            link = str(c.info("replication").get("master_link_status", "up"))
        return str(info["cluster_state"]), slots, link

    def wait_ok(self, timeout: float) -> None:
        """Until every running node says ``cluster_state:ok``, they agree on the slots,
        every slot is served, every replica's link to its primary is up."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                views = [self._view(n) for n in self.nodes if n.running()]
                states = {v[0] for v in views}
                maps = {v[1] for v in views}
                links = {v[2] for v in views}
                last = (states, len(maps), links)
                if states == {"ok"} and len(maps) == 1 and links == {"up"}:
                    (slot_map,) = maps
                    if sum(b - a + 1 for a, b, _ in slot_map) == SLOTS:
                        return
            except redis.RedisError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ready after {timeout}s: {last}")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- faults ----------------------------------------------------------------------

    def primary_of(self, key: str) -> Node:
        """The node serving ``key``'s slot now (asked from a running node)."""
        slot = key_slot(key.encode())
        for node in self.nodes:
            if not node.running():
                continue
            with node.client(1.0) as c:
                for first, last, *owners in c.execute_command("CLUSTER SLOTS"):
                    if int(first) <= slot <= int(last):
                        return self.node(int(owners[0][1]))
        raise RuntimeError(f"no running node knows who serves slot {slot}")

    def kill(self, node: Node) -> None:
        """SIGKILL one node (no shutdown, no failover handshake)."""
        node.kill()

    def wait_promoted(self, key: str, dead: Node, timeout: float = PROMOTION_TIMEOUT) -> Node:
        """Until every running node says a node other than ``dead`` serves ``key``'s slot
        and the cluster is ok again; return the new primary."""
        deadline = time.monotonic() + timeout
        slot = key_slot(key.encode())
        while True:
            owners: set[int] = set()
            try:
                for node in self.nodes:
                    if node.running():
                        with node.client(1.0) as c:
                            if c.execute_command("CLUSTER INFO")["cluster_state"] != "ok":
                                owners.add(-1)
                                continue
                            for first, last, *serving in c.execute_command("CLUSTER SLOTS"):
                                if int(first) <= slot <= int(last):
                                    owners.add(int(serving[0][1]))
            except redis.RedisError:
                owners.add(-1)
            if len(owners) == 1 and -1 not in owners and dead.port not in owners:
                return self.node(owners.pop())
            if time.monotonic() > deadline:
                raise RuntimeError(f"slot {slot} not failed over after {timeout}s: {owners}")
            time.sleep(0.02)

    def rejoin(self, node: Node, timeout: float = FORM_TIMEOUT) -> None:
        """Start a killed node again with its config file: it rejoins as a replica."""
        node.spawn()
        node.wait_ready()
        deadline = time.monotonic() + timeout
        with node.client(1.0) as c:
            while True:  # it starts as the primary it was, until gossip tells it otherwise
                replication = c.info("replication")
                if replication.get("role") == "slave":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{node.name} did not rejoin as a replica: {replication}")
                time.sleep(0.05)
        self.wait_ok(max(0.0, deadline - time.monotonic()))

    # -- per-test key spaces ---------------------------------------------------------

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` (one slot when it has a hash tag)."""
        pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix) + "*"
        deleted = 0
        with self.client() as client:
            keys = list(client.scan_iter(match=pattern, count=1000))
            for key in keys:
                deleted += int(client.delete(key))
        return deleted
