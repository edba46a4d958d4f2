"""Replicas supervised like a Kubernetes Deployment, and a broker auditor thread."""

from __future__ import annotations

import importlib.util
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from safe_redbeat.leader.lease import Holder, parse_token
from safe_redbeat.model.occurrence import HEADER_ENTRY, HEADER_FENCE, HEADER_SCHEDULED
from testbed.beat import PRIORITY_SEP, REPO_ROOT, BeatProcess, Message
from tests.chaos.model import LeaseSample, ReplicaExit, Sent
from tests.support import KEYS

SKEW_DIR = Path(__file__).resolve().parent / "skew"
#: Environment variable read by tests/chaos/skew/sitecustomize.py (fallback skew).
SKEW_ENV = "SRB_CLOCK_SKEW"
#: Set to "sitecustomize" to use the fallback even where libfaketime is installed.
SKEW_WITH_ENV = "SRB_CHAOS_SKEW_WITH"


def libfaketime_path() -> str | None:
    """The libfaketime shared object shipped by the ``libfaketime`` wheel, if installed."""
    spec = importlib.util.find_spec("libfaketime")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
    return str(path) if path.is_file() else None


def skew_env(offset: float) -> tuple[dict[str, str], str]:
    """Environment that shifts a beat process' wall clock by ``offset`` seconds.

    With libfaketime (LD_PRELOAD) every wall-clock read of the process is shifted
    (``time.time``, ``datetime.now``, C libraries); the monotonic clock is not. Without
    it, a ``sitecustomize`` shifts Python's ``time.time``/``time.time_ns`` only.
    """
    library = libfaketime_path()
    if library is not None and os.environ.get(SKEW_WITH_ENV) != "sitecustomize":
        return (
            {
                "LD_PRELOAD": library,
                "FAKETIME": f"{offset:+.0f}",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                "DONT_FAKE_MONOTONIC": "1",
            },
            "libfaketime",
        )
    pythonpath = os.pathsep.join([str(SKEW_DIR), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": pythonpath.rstrip(os.pathsep), SKEW_ENV: str(offset)}, "sitecustomize"


@dataclass
class Replica:
    """One pod of the Deployment: restarted with the same name and env when it exits."""

    name: str
    extra_env: dict[str, str] = field(default_factory=dict)
    generation: int = 0
    process: BeatProcess | None = None
    expected_exit: str = ""
    restart_at: float | None = None
    #: a SIGTERMed process still running then is SIGKILLed, and counted as a crash
    term_deadline: float | None = None


class Supervisor:
    """Keeps ``replicas`` running; records every exit and whether we caused it."""

    def __init__(
        self,
        redis_url: str,
        logdir: Path,
        *,
        settings: dict[str, Any],
        schedule: dict[str, dict[str, Any]],
        loglevel: str = "INFO",
        restart_delay: float = 0.5,
        term_grace: float = 10.0,
        broker_url: str | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.broker_url = broker_url
        self.logdir = logdir
        self.settings = settings
        self.schedule = schedule
        self.loglevel = loglevel
        self.restart_delay = restart_delay
        self.term_grace = term_grace
        self.replicas: dict[str, Replica] = {}
        self.exits: list[ReplicaExit] = []
        self.all_processes: list[BeatProcess] = []
        #: pid -> replica name, for every process ever started
        self.pids: dict[int, str] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._shutting_down = False
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------

    def add(self, name: str, extra_env: dict[str, str] | None = None) -> Replica:
        with self._lock:
            replica = Replica(name, dict(extra_env or {}))
            self.replicas[name] = replica
            self._spawn(replica)
            return replica

    def _spawn(self, replica: Replica) -> None:
        replica.generation += 1
        process = BeatProcess(
            self.redis_url,
            broker_url=self.broker_url,
            logdir=self.logdir,
            name=f"{replica.name}.gen{replica.generation}",
            settings=self.settings,
            schedule=self.schedule,
            instance=replica.name,
            loglevel=self.loglevel,
            extra_env=replica.extra_env,
        )
        process.start()
        replica.process = process
        replica.expected_exit = ""
        replica.restart_at = None
        replica.term_deadline = None
        self.all_processes.append(process)
        self.pids[process.pid] = replica.name

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                now = time.time()
                for replica in self.replicas.values():
                    process = replica.process
                    if process is None:
                        continue
                    code = process.returncode
                    if (
                        code is None
                        and replica.term_deadline is not None
                        and now >= replica.term_deadline
                        and not self._shutting_down
                    ):
                        # what a kubelet does after terminationGracePeriodSeconds
                        self.exits.append(
                            ReplicaExit(
                                replica=replica.name,
                                generation=replica.generation,
                                pid=process.pid,
                                returncode=None,
                                at=now,
                                expected=False,
                                cause=f"still running {self.term_grace:g}s after SIGTERM",
                            )
                        )
                        replica.term_deadline = None
                        replica.expected_exit = "SIGKILL (SIGTERM grace period over)"
                        process.sigcont()
                        process.kill()
                        code = process.returncode
                    if code is not None and replica.restart_at is None:
                        self.exits.append(
                            ReplicaExit(
                                replica=replica.name,
                                generation=replica.generation,
                                pid=process.pid,
                                returncode=code,
                                at=now,
                                expected=_expected(replica.expected_exit, code),
                                cause=replica.expected_exit or "unexpected exit",
                            )
                        )
                        replica.restart_at = now + self.restart_delay
                    if (
                        replica.restart_at is not None
                        and now >= replica.restart_at
                        and not self._shutting_down
                    ):
                        self._spawn(replica)
            self._stop.wait(0.05)

    def shutdown(self, timeout: float = 15.0) -> dict[str, int | None]:
        """SIGTERM every replica, return their exit codes, then stop supervising.

        The supervisor thread stays alive until the replicas exited: processes it
        restarted die with it (``die_with_parent`` is per thread).
        """
        codes: dict[str, int | None] = {}
        with self._lock:
            self._shutting_down = True
            running = []
            for replica in self.replicas.values():
                process = replica.process
                if process is None or replica.restart_at is not None or not process.alive():
                    continue
                replica.expected_exit = "SIGTERM (end of run)"
                process.sigcont()
                process.terminate()
                running.append(replica)
        deadline = time.monotonic() + timeout
        for replica in running:
            assert replica.process is not None
            codes[replica.name] = replica.process.wait(max(deadline - time.monotonic(), 0.1))
        time.sleep(0.2)  # let the thread record the exits
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.cleanup()
        return codes

    def cleanup(self) -> None:
        """Kill every process this supervisor ever started that is still alive (by PID)."""
        self._stop.set()
        for process in self.all_processes:
            if process.alive():
                process.sigcont()
                process.kill()

    # -- faults -----------------------------------------------------------------------

    def signal(self, name: str, sig: int, *, cause: str) -> BeatProcess:
        """Send ``sig`` to the current process of replica ``name``; an exit is expected."""
        with self._lock:
            replica = self.replicas[name]
            process = replica.process
            if process is None:
                raise RuntimeError(f"replica {name} has no process")
            if sig in (signal.SIGKILL, signal.SIGTERM):
                replica.expected_exit = cause
            if sig == signal.SIGTERM:
                replica.term_deadline = time.time() + self.term_grace
            process.stop_signal(sig)
            return process

    def process_of(self, name: str) -> BeatProcess | None:
        with self._lock:
            return self.replicas[name].process

    def all_running(self) -> bool:
        with self._lock:
            return all(r.process is not None and r.process.alive() for r in self.replicas.values())

    def logs(self, lines: int = 30) -> str:
        return "\n".join(
            f"==== {p.name} pid={p.pid} rc={p.returncode}\n{p.log_tail(lines)}"
            for p in self.all_processes
        )


def _expected(cause: str, code: int) -> bool:
    if cause.startswith("SIGKILL"):
        return code == -signal.SIGKILL
    if cause.startswith("SIGTERM"):
        return code in (0, -signal.SIGTERM)
    return False


# -- leader -------------------------------------------------------------------------------


def current_holder(client: redis.Redis, lease_key: str = KEYS.lease) -> Holder | None:
    try:
        value = client.get(lease_key)
    except redis.RedisError:
        return None
    return None if value is None else parse_token(str(value))


def wait_for_leader(
    client: redis.Redis,
    timeout: float,
    *,
    among: set[str] | None = None,
    lease_key: str = KEYS.lease,
) -> Holder:
    deadline = time.monotonic() + timeout
    while True:
        holder = current_holder(client, lease_key)
        if (
            holder is not None
            and holder.fence is not None
            and (among is None or holder.name in among)
        ):
            return holder
        if time.monotonic() >= deadline:
            raise AssertionError(f"no leader{f' among {among}' if among else ''} in {timeout}s")
        time.sleep(0.05)


# -- auditor ------------------------------------------------------------------------------


def to_sent(message: Message) -> Sent:
    headers = message.headers

    def as_int(value: Any) -> int | None:
        try:
            return int(value)
        except (TypeError, ValueError):
            return None

    return Sent(
        task_id=message.task_id,
        entry=headers.get(HEADER_ENTRY),
        scheduled=as_int(headers.get(HEADER_SCHEDULED)),
        fence=as_int(headers.get(HEADER_FENCE)),
        origin=str(headers.get("origin", "")),
        arrived=message.received_at,
        args=tuple(message.args),
        kwargs=dict(message.kwargs),
        custom_header=headers.get("x-chaos"),
    )


#: Takes every message of the lists in KEYS at once (LPUSH on publish: the oldest is last).
#: KEYS - queue lists; return one array per key, empty for a key that is absent or holds
#: another type (that key is left alone: the broker-refuse-one fault put it there).
DRAIN_SCRIPT = """
local taken = {}
for i, key in ipairs(KEYS) do
    if redis.call('TYPE', key)['ok'] == 'list' then
        taken[i] = redis.call('LRANGE', key, 0, -1)
        redis.call('DEL', key)
    else
        taken[i] = {}
    end
end
return taken
"""

#: Puts a SET where a queue list was, so that LPUSH to it fails with WRONGTYPE.
#: KEYS[1] - the queue list; ARGV[1] - the set's member; return the list's messages
#: (taken, as the drain takes them).
REFUSE_SCRIPT = """
local taken = {}
if redis.call('TYPE', KEYS[1])['ok'] == 'list' then
    taken = redis.call('LRANGE', KEYS[1], 0, -1)
end
redis.call('DEL', KEYS[1])
redis.call('SADD', KEYS[1], ARGV[1])
return taken
"""

#: Undoes REFUSE_SCRIPT. KEYS[1] - the queue; return 1 if a SET was removed, else 0.
RESTORE_SCRIPT = """
if redis.call('TYPE', KEYS[1])['ok'] == 'set' then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def queue_lists(queue: str) -> list[str]:
    """The Redis lists kombu's transport keeps ``queue`` in (one per priority step)."""
    return [queue] + [f"{queue}{PRIORITY_SEP}{step}" for step in range(1, 10)]


@dataclass(frozen=True)
class Held:
    """What the broker's queues held at one point of the broker's own command order: its
    writes paused (``CLIENT PAUSE WRITE``), by queue list, oldest first. ``at``: just
    after the pause took effect (every message here was pushed before it)."""

    at: float
    lists: dict[str, list[str]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(len(items) for items in self.lists.values())


def split_held(
    taken: Sequence[tuple[str, list[str]]], held: dict[str, list[str]]
) -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]], bool]:
    """Split one drain (``taken``: each queue list as LRANGE returns it, newest first) into
    the messages ``held`` had (each list's, oldest first) and the later ones; and whether
    they were found.

    A publish is an LPUSH and only the auditor takes messages, so what the broker held is
    the right end of each list, in the same order. Where a list does not end so, nothing
    is taken for held: every message is dated by the auditor's clock, which can only add
    runs to an outage, never hide one."""
    lists = dict(taken)
    early: list[tuple[str, list[str]]] = []
    late: list[tuple[str, list[str]]] = []
    for name, items in taken:
        mine = held.get(name, [])
        cut = len(items) - len(mine)
        if cut < 0 or list(reversed(items[cut:])) != mine:
            return [], list(taken), False
        early.append((name, items[cut:]))
        late.append((name, items[:cut]))
    if any(items and name not in lists for name, items in held.items()):
        return [], list(taken), False
    return early, late, True


class AuditorThread:
    """Drains the broker queues every ``interval`` seconds into compact ``Sent`` records.

    Faults that cut connections or stop Redis run inside :meth:`hold`, so no drain is in
    flight when its reply could be lost (the auditor itself must not lose messages).
    """

    def __init__(
        self, host: str, port: int, *, db: int = 0, interval: float = 0.05,
        queues: Sequence[str] = ("celery",),
        on_taken: Callable[[list[Message]], None] | None = None,
    ) -> None:  # fmt: skip
        #: called with the messages of each drain (a worker that runs them at once)
        self.on_taken = on_taken
        self.client = redis.Redis(
            host=host, port=port, db=db, decode_responses=True, socket_timeout=3,
            socket_connect_timeout=1,
        )  # fmt: skip
        self.lists = [name for queue in queues for name in queue_lists(queue)]
        self.interval = interval
        self.sent: list[Sent] = []
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="auditor", daemon=True)

    def start(self) -> AuditorThread:
        self._thread.start()
        return self

    def drain(self) -> int:
        try:
            return self.drain_from(self.client)
        except redis.RedisError:
            self.errors += 1
            return 0

    def drain_from(self, client: redis.Redis, *, at: float | None = None) -> int:
        """Take every queued message of ``client``'s server; ``at``: when they arrived
        (default: now). Call it inside :meth:`hold` for another client."""
        taken = client.eval(DRAIN_SCRIPT, len(self.lists), *self.lists)
        return self._record(list(zip(self.lists, taken, strict=True)), at)

    def _record(self, taken: list[tuple[str, list[str]]], at: float | None) -> int:
        arrived = time.time() if at is None else at
        new = [
            Message.parse(raw, arrived, name) for name, items in taken for raw in reversed(items)
        ]
        self.sent.extend(to_sent(m) for m in new)
        if new and self.on_taken is not None:
            self.on_taken(new)
        return len(new)

    def refuse(self, queue: str, member: str = "chaos-refused") -> float:
        """Put a SET where ``queue``'s list is (its messages are taken first, in the same
        step); LPUSH to it fails from then on. The time it happened."""
        with self._lock:
            self.drain()
            taken = self.client.eval(REFUSE_SCRIPT, 1, queue, member)
            at = time.time()
            self._record([(queue, list(taken))], at)
            return at

    def pause_writes(self, timeout: float) -> Held:
        """Stop every write to the broker (``CLIENT PAUSE WRITE``, ``timeout`` seconds at
        most) and read what its queues hold then; call it inside :meth:`hold` and end it
        with :meth:`resume_writes`. A publish from now on waits in the broker, as it does
        on a frozen one."""
        self.client.client_pause(max(int(timeout * 1000), 1), all=False)
        at = time.time()
        with self.client.pipeline(transaction=False) as pipe:
            for name in self.lists:
                pipe.lrange(name, 0, -1)
            # a key that is no list (broker-refuse-one's SET) holds no message
            replies = pipe.execute(raise_on_error=False)
        lists = {
            name: list(reversed(items))
            for name, items in zip(self.lists, replies, strict=True)
            if isinstance(items, list) and items
        }
        return Held(at, lists)

    def resume_writes(self, held: Held) -> tuple[float, bool]:
        """``CLIENT UNPAUSE``, then take every queued message: those ``held`` had arrived
        at ``held.at``, the others now. When the writes went on, and whether every held
        message was found (if not, all of them are dated now; see :func:`split_held`)."""
        self.client.client_unpause()
        resumed = time.time()
        try:
            replies = self.client.eval(DRAIN_SCRIPT, len(self.lists), *self.lists)
        except redis.RedisError:
            self.errors += 1
            return resumed, False  # the next drain takes them, dated then
        taken = list(zip(self.lists, replies, strict=True))
        early, late, found = split_held(taken, held.lists)
        self._record(early, held.at)
        self._record(late, None)
        if not found:
            self.errors += 1
        return resumed, found

    def restore(self, queue: str) -> float:
        """Remove the SET :meth:`refuse` put there; the time it happened."""
        with self._lock:
            self.client.eval(RESTORE_SCRIPT, 1, queue)
            return time.time()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self.drain()
            self._stop.wait(self.interval)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """No drain runs inside this block; one runs right before it."""
        with self._lock:
            self.drain()
            yield

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        with self._lock:
            self.drain()
        self.client.close()


# -- shard leases -------------------------------------------------------------------------


class LeaseMonitor:
    """Reads every shard's lease key (one MGET) every ``interval`` seconds.

    ``samples`` is the record the oracle turns into each shard's leaderless gaps; a poll
    Redis did not answer is left out (a gap in the record, not a gap in leadership).
    """

    def __init__(
        self, host: str, port: int, lease_keys: Sequence[str], *, db: int = 0,
        interval: float = 0.1,
    ) -> None:  # fmt: skip
        self.client = redis.Redis(
            host=host, port=port, db=db, decode_responses=True, socket_timeout=2,
            socket_connect_timeout=1,
        )  # fmt: skip
        self.lease_keys = list(lease_keys)
        self.interval = interval
        self.samples: list[LeaseSample] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-monitor", daemon=True)

    def start(self) -> LeaseMonitor:
        self._thread.start()
        return self

    def sample(self) -> LeaseSample | None:
        try:
            values = self.client.mget(self.lease_keys)
        except redis.RedisError:
            self.errors += 1
            return None
        found = LeaseSample(time.time(), tuple(None if v is None else str(v) for v in values))
        self.samples.append(found)
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.client.close()

    def holders(self) -> list[Holder | None]:
        """The holder of each shard now (one MGET)."""
        values = self.client.mget(self.lease_keys)
        return [None if value is None else parse_token(str(value)) for value in values]
