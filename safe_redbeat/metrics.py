"""Prometheus metrics of one beat replica (``pip install 'safe-redbeat[metrics]'``).

Counters and histograms are fed by :mod:`safe_redbeat.signals`; gauges are read when
scraped: leadership from the scheduler's leases, counts from Redis (``HLEN`` of the pending
and dead hashes of the shards this replica leads; entries by state of those shards,
recomputed at most every ``entries_refresh_seconds``). Summed over the replicas, each count
covers the whole schedule once. No metric has a per-entry label.

Serve them from each replica with ``safe_redbeat_http_port`` (see
:mod:`safe_redbeat.observe.monitoring`), or register them on a registry your process already
serves::

    from prometheus_client import REGISTRY
    from safe_redbeat.metrics import register

    register(REGISTRY)
"""

from __future__ import annotations

import json
import platform
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from importlib import metadata
from typing import Any

from celery.utils.log import get_logger

from . import signals
from .errors import InvalidEntry
from .model.codec import decode_meta
from .model.lifecycle import PARKED, STATES, Lifecycle, decode_state, state_of
from .model.occurrence import Occurrence
from .observe.http import HttpServer, Response, Route
from .observe.http import serve as serve_http
from .store.persistence import count_redis_only, read_persistence
from .store.rows import EntryRows, Row

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "safe_redbeat.metrics needs prometheus-client: pip install 'safe-redbeat[metrics]'"
    ) from exc

__all__ = [
    "DEPRECATED_NAMES",
    "ENTRY_STATES",
    "SKIP_REASONS",
    "MetricsServer",
    "SchedulerMetrics",
    "exposition",
    "register",
    "serve",
]

logger = get_logger("safe_redbeat.metrics")

#: Values of the ``state`` label of ``safe_redbeat_entries`` (the states ``status`` shows).
ENTRY_STATES = STATES
#: the ``mode`` values of ``safe_redbeat_redis_persistence`` (store/persistence.py)
PERSISTENCE_MODES = ("aof", "rdb", "aof+rdb", "none", "unknown")

#: Values of the ``reason`` label of ``safe_redbeat_occurrences_skipped_total``.
SKIP_REASONS = ("catch_up", "overlap")

#: ``cause`` of a leadership change that is not a loss (a label value is never empty).
NO_CAUSE = "none"

#: Metrics renamed in 0.2, old name → new name. The old names are still exported with
#: the same values for one release, then removed.
DEPRECATED_NAMES = {
    "safe_redbeat_lease_seconds_left": "safe_redbeat_renew_deadline_seconds",
    "safe_redbeat_pending": "safe_redbeat_pending_occurrences",
    "safe_redbeat_dead": "safe_redbeat_dead_occurrences",
    "safe_redbeat_loader_removals_held": "safe_redbeat_loader_held_removals",
    "safe_redbeat_occurrences_parked_total": "safe_redbeat_entries_parked_total",
}

LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
TICK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RECONCILE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class SchedulerMetrics:
    """The metrics of the scheduler in this process, registered on ``registry``."""

    def __init__(
        self, registry: CollectorRegistry, *, entries_refresh_seconds: float = 60.0
    ) -> None:
        self.registry = registry
        self._scheduler: Callable[[], Any] = lambda: None
        self.leadership_changes = Counter(
            "safe_redbeat_leadership_changes",
            "Leadership changes of this replica, by change and cause of a loss.",
            ["change", "cause"],
            registry=registry,
        )
        occurrences = {
            "claimed": "Occurrences claimed (each is then sent, or stays pending).",
            "sent": "Occurrences the broker accepted, first send.",
            "republished": "Occurrences sent again from a pending record (same task id).",
            "parked": "Deprecated: safe_redbeat_entries_parked_total (it counts entries).",
            "dead": "Occurrences given up on and moved to the dead letters.",
        }
        self.occurrences = {
            kind: Counter(f"safe_redbeat_occurrences_{kind}", text, registry=registry)
            for kind, text in occurrences.items()
        }
        self.skipped = Counter(
            "safe_redbeat_occurrences_skipped",
            "Occurrences not sent, by reason: catch_up (missed, catch_up=skip), overlap "
            "(the entry's previous run still went, overlap=skip).",
            ["reason"],
            registry=registry,
        )
        for reason in SKIP_REASONS:
            self.skipped.labels(reason)
        self.runs_revoked = Counter(
            "safe_redbeat_runs_revoked",
            "Runs revoked because an occurrence replaced them (overlap=replace); asked of "
            "the workers, best effort.",
            registry=registry,
        )
        self.entries_parked = Counter(
            "safe_redbeat_entries_parked",
            "Malformed entries parked (left in place, checked again later); once per "
            "distinct bad content.",
            registry=registry,
        )
        self.dispatch_lag = Histogram(
            "safe_redbeat_dispatch_lag_seconds",
            "Publish time (broker batch accepted, local clock) minus scheduled time.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.tick_duration = Histogram(
            "safe_redbeat_tick_duration_seconds",
            "Duration of one beat tick, by the role after the tick.",
            ["role"],
            buckets=TICK_BUCKETS,
            registry=registry,
        )
        self.redis_errors = Counter(
            "safe_redbeat_redis_errors",
            "Redis errors caught by the beat loop (each starts or continues a backoff).",
            registry=registry,
        )
        self.reconcile_duration = Histogram(
            "safe_redbeat_reconcile_duration_seconds",
            "Duration of one reconcile, by source (beat_schedule, loader).",
            ["source"],
            buckets=RECONCILE_BUCKETS,
            registry=registry,
        )
        self.reconciles = Counter(
            "safe_redbeat_reconciles",
            "Reconciles by source and result (ok, error: some entry or the loader failed).",
            ["source", "result"],
            registry=registry,
        )
        self.reconcile_success = Gauge(
            "safe_redbeat_reconcile_last_success_timestamp_seconds",
            "UNIX time of the last reconcile of a source without errors, by this replica.",
            ["source"],
            registry=registry,
        )
        self.state = _StateCollector(self, entries_refresh_seconds)
        registry.register(self.state)
        self._receivers: list[tuple[Any, Callable[..., None]]] = [
            (signals.leadership_changed, self._on_leadership),
            (signals.occurrences_sent, self._on_sent),
            (signals.occurrence_dead, self._on_dead),
            (signals.batch_claimed, self._on_claimed),
            (signals.occurrence_overlapped, self._on_overlapped),
            (signals.entry_parked, self._on_parked),
            (signals.redis_error, self._on_redis_error),
            (signals.tick_finished, self._on_tick),
            (signals.reconciled, self._on_reconciled),
        ]
        for signal, receiver in self._receivers:
            signal.connect(receiver, weak=False, dispatch_uid=self._uid(signal))

    def _uid(self, signal: Any) -> str:
        return f"safe_redbeat.metrics.{id(self)}.{signal.name}"

    def close(self) -> None:
        """Disconnect from the signals and unregister from the registry."""
        for signal, receiver in self._receivers:
            signal.disconnect(receiver, dispatch_uid=self._uid(signal))
        self.registry.unregister(self.state)

    def watch(self, scheduler: Any) -> None:
        """Read leadership and counts from ``scheduler`` (else: the last one that ticked)."""
        self._scheduler = weakref.ref(scheduler)

    @property
    def scheduler(self) -> Any:
        return self._scheduler()

    # -- receivers ----------------------------------------------------------------------

    def _on_leadership(self, sender: Any, change: str, cause: str | None, **_: Any) -> None:
        self.watch(sender)
        self.leadership_changes.labels(change, cause or NO_CAUSE).inc()

    def _on_sent(
        self,
        sender: Any,
        occurrences: Sequence[Occurrence],
        republished: bool,
        sent_at: float,
        **_: Any,
    ) -> None:
        self.occurrences["republished" if republished else "sent"].inc(len(occurrences))
        if republished:
            return  # their lag measures the outage that left them pending, not dispatch
        observe = self.dispatch_lag.observe
        for occurrence in occurrences:
            observe(max(sent_at - occurrence.scheduled, 0.0))

    def _on_dead(self, sender: Any, **_: Any) -> None:
        self.occurrences["dead"].inc()

    def _on_claimed(self, sender: Any, claimed: int, skipped: int, **_: Any) -> None:
        self.occurrences["claimed"].inc(claimed)
        if skipped:
            self.skipped.labels("catch_up").inc(skipped)

    def _on_overlapped(self, sender: Any, action: str, running: Sequence[str], **_: Any) -> None:
        if action == "skipped":
            self.skipped.labels("overlap").inc()
        else:
            self.runs_revoked.inc(len(running))

    def _on_parked(self, sender: Any, **_: Any) -> None:
        self.entries_parked.inc()
        self.occurrences["parked"].inc()

    def _on_redis_error(self, sender: Any, **_: Any) -> None:
        self.redis_errors.inc()

    def _on_tick(self, sender: Any, duration: float, leader: bool, **_: Any) -> None:
        if self._scheduler() is not sender:
            self.watch(sender)
        self.tick_duration.labels("leader" if leader else "standby").observe(duration)

    def _on_reconciled(
        self, sender: Any, result: Any, removals_held: int | None = None, **_: Any
    ) -> None:
        source = str(result.source)
        self.reconcile_duration.labels(source).observe(float(result.seconds))
        self.reconciles.labels(source, "error" if result.errors else "ok").inc()
        if not result.errors:
            self.reconcile_success.labels(source).set(time.time())
        if removals_held is not None:
            self.state.removals_held = int(removals_held)


class _StateCollector(Collector):
    """Gauges read at scrape time from the scheduler and Redis."""

    def __init__(self, metrics: SchedulerMetrics, entries_refresh_seconds: float) -> None:
        self.metrics = metrics
        self.entries_refresh_seconds = entries_refresh_seconds
        #: set by a ``reconciled`` signal that reports it
        self.removals_held: int | None = None
        self._lock = threading.Lock()
        self._entries: dict[str, int] | None = None
        self._entries_at = float("-inf")
        self._entries_of: tuple[int, ...] = ()
        self._persistence_read: tuple[str, int | None] | None = None
        self._persistence_at = float("-inf")
        self._persistence_of: tuple[int, ...] = ()

    def describe(self) -> Iterable[Any]:
        return []  # collected at scrape time only; never on registration

    def collect(self) -> Iterable[Any]:
        yield _build_info()
        scheduler = self.metrics.scheduler
        leading = scheduler is not None and bool(scheduler.is_leader)
        led = _led_shards(scheduler) if leading else []
        lease = led[0].leadership.lease if led else None
        yield _gauge("safe_redbeat_is_leader", "1 while this replica leads a shard.", int(leading))
        yield _gauge("safe_redbeat_shards_led", "Shards this replica leads.", len(led))
        if scheduler is not None:
            family = GaugeMetricFamily(
                "safe_redbeat_leads_shard",
                "1 for each shard of the layout this replica leads, 0 for the others.",
                labels=["shard"],
            )
            mine = {shard.index for shard in led}
            for shard in scheduler.shards:
                family.add_metric([str(shard.index)], int(shard.index in mine))
            yield family
        yield _gauge(
            "safe_redbeat_fence",
            "Fence number of the lease this replica holds (its lowest shard; 0 when standby).",
            (lease.fence or 0) if lease is not None else 0,
        )
        left = 0.0
        if lease is not None:
            left = max(lease.deadline() - lease.monotonic(), 0.0)
        yield from _renamed(
            "safe_redbeat_renew_deadline_seconds",
            "Seconds until this leader's renew deadline, when it stops dispatching unless it "
            "renewed (0 when standby).",
            left,
        )
        yield from _renamed(
            "safe_redbeat_loader_held_removals",
            "Loader removals refused by this leader's last reconcile (held for review with "
            "safe-redbeat sync --allow-removals); 0 when standby.",
            (self.removals_held or 0) if leading else 0,
        )
        if scheduler is None:
            return
        with self._lock:
            try:
                pending, dead = _hlens(scheduler, led)
            except Exception as exc:  # Redis down: the scrape still answers
                logger.debug("metrics: counts not read from Redis: %s", exc)
                return
            yield from _renamed(
                "safe_redbeat_pending_occurrences",
                "Occurrences claimed and not yet published (pending hashes of the shards "
                "this replica leads).",
                pending,
            )
            yield from _renamed(
                "safe_redbeat_dead_occurrences",
                "Occurrences in the dead letters (of the shards this replica leads).",
                dead,
            )
            entries = self._entries_by_state(scheduler, led)
            persistence = self._persistence(scheduler, led)
        if persistence is not None:
            mode, redis_only = persistence
            family = GaugeMetricFamily(
                "safe_redbeat_redis_persistence",
                "1 for how the schedule's Redis persists its data (aof, rdb, aof+rdb, none, "
                f"unknown where it would not say), 0 for the others; refreshed at most every "
                f"{self.entries_refresh_seconds:g}s.",
                labels=["mode"],
            )
            for name in PERSISTENCE_MODES:
                family.add_metric([name], int(name == mode))
            yield family
            if redis_only is not None:
                yield _gauge(
                    "safe_redbeat_redis_only_entries",
                    "Entries of the shards this replica leads that neither beat_schedule nor "
                    "the loader owns: a Redis that loses its data loses them for good "
                    "(safe-redbeat export backs them up).",
                    redis_only,
                )
        if entries is not None:
            family = GaugeMetricFamily(
                "safe_redbeat_entries",
                "Entries of the shards this replica leads, by state (refreshed at most every "
                f"{self.entries_refresh_seconds:g}s).",
                labels=["state"],
            )
            for state in ENTRY_STATES:
                family.add_metric([state], entries.get(state, 0))
            yield family

    def _persistence(self, scheduler: Any, led: list[Any]) -> tuple[str, int | None] | None:
        """How Redis persists, and (on a leader) how many entries only Redis holds; read
        at most every ``entries_refresh_seconds``. None while Redis does not answer."""
        now = time.monotonic()
        of = tuple(shard.index for shard in led)
        if (
            self._persistence_read is None
            or now - self._persistence_at >= (self.entries_refresh_seconds)
            or of != self._persistence_of
        ):
            try:
                client = scheduler.client
                mode = read_persistence(client).mode
                only = count_redis_only(client, [shard.keys for shard in led]) if led else None
            except Exception as exc:
                logger.debug("metrics: Redis persistence not read: %s", exc)
                return self._persistence_read
            self._persistence_read = (mode, only)
            self._persistence_at, self._persistence_of = now, of
        return self._persistence_read

    def _entries_by_state(self, scheduler: Any, led: list[Any]) -> dict[str, int] | None:
        if not led:
            self._entries = None
            return None
        now = time.monotonic()
        of = tuple(shard.index for shard in led)
        if (
            self._entries is None
            or of != self._entries_of
            or now - self._entries_at >= self.entries_refresh_seconds
        ):
            try:
                counts = dict.fromkeys(ENTRY_STATES, 0)
                for shard in led:
                    found = count_entries(scheduler.client, shard.keys, app=scheduler.app)
                    for state, n in found.items():
                        counts[state] += n
            except Exception as exc:
                logger.debug("metrics: entries not counted: %s", exc)
                return self._entries if of == self._entries_of else None
            self._entries, self._entries_at, self._entries_of = counts, now, of
        return self._entries


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


_OLD_NAMES = {new: old for old, new in DEPRECATED_NAMES.items()}


def _renamed(name: str, documentation: str, value: float) -> Iterable[GaugeMetricFamily]:
    """The gauge ``name``, and under its old name too while that is deprecated."""
    yield _gauge(name, documentation, value)
    old = _OLD_NAMES.get(name)
    if old is not None:
        yield _gauge(old, f"Deprecated: {name}.", value)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


_BUILD: dict[str, str] = {}


def _build_info() -> GaugeMetricFamily:
    """``safe_redbeat_build_info{version, python, celery, kombu, redbeat, redis} 1``."""
    if not _BUILD:
        from . import __version__

        _BUILD.update(
            version=__version__,
            python=platform.python_version(),
            celery=_version("celery"),
            kombu=_version("kombu"),
            redbeat=_version("celery-redbeat"),
            redis=_version("redis"),
        )
    family = GaugeMetricFamily(
        "safe_redbeat_build_info",
        "Always 1; the labels name the versions of safe_redbeat and what it runs on.",
        labels=list(_BUILD),
    )
    family.add_metric(list(_BUILD.values()), 1)
    return family


def _led_shards(scheduler: Any) -> list[Any]:
    """The shards ``scheduler`` leads inside their renew deadline, by index."""
    return [shard for shard in scheduler.shards if shard.leadership.elected]


def _hlens(scheduler: Any, led: list[Any]) -> tuple[int, int]:
    """Pending and dead records of the shards in ``led`` (0, 0 without a Redis call)."""
    if not led:
        return 0, 0
    with scheduler.client.pipeline(transaction=False) as pipe:
        for shard in led:
            pipe.hlen(shard.keys.pending)
            pipe.hlen(shard.keys.dead)
        counts = [int(n) for n in pipe.execute()]
    return sum(counts[::2]), sum(counts[1::2])


def count_entries(client: Any, keys: Any, *, app: Any = None, page: int = 1000) -> dict[str, int]:
    """Entries of one shard by state, as ``status`` shows them (at Redis' time)."""
    counts = dict.fromkeys(ENTRY_STATES, 0)
    members = client.zscan_iter(keys.schedule, count=page)
    rows = EntryRows(client, keys, app)
    while True:
        chunk = [member for member, _score in _take(members, page)]
        if not chunk:
            return counts
        found = rows.read(chunk) if app is not None else None
        if found is None:  # no app: the definition only (no time zone for "now")
            for raw in rows.definitions(chunk):
                counts[_state(raw)] += 1
            continue
        for row in found.rows:
            counts[_row_state(row, found.now)] += 1


def _take(iterator: Iterable[Any], n: int) -> list[Any]:
    out = []
    for item in iterator:
        out.append(item)
        if len(out) >= n:
            break
    return out


def _state(raw: str | bytes | None) -> str:
    """``parked`` if a definition cannot be used, else ``active`` or ``disabled``."""
    if not raw:
        return PARKED
    try:
        definition = json.loads(raw)
    except ValueError:
        return PARKED
    if not isinstance(definition, dict) or not definition.get("task"):
        return PARKED
    if "schedule" not in definition:
        return PARKED
    return "active" if definition.get("enabled", True) else "disabled"


def _row_state(row: Row, now: datetime) -> str:
    """An entry's state from its hash: the definition, run count and lifetime fields."""
    enabled = _state(row.definition)
    if enabled == PARKED:
        return PARKED
    try:
        lifecycle = Lifecycle.decode(row.key, row.fields[4])
        stored = decode_state(row.key, row.state)
        _last, runs = decode_meta(row.key, row.meta)
    except InvalidEntry:
        return PARKED
    return state_of(
        enabled=enabled == "active",
        lifecycle=lifecycle,
        stored_state=stored,
        total_run_count=runs,
        now=now,
    )


_registered: dict[int, SchedulerMetrics] = {}
_registered_lock = threading.Lock()


def register(registry: CollectorRegistry, **options: Any) -> SchedulerMetrics:
    """Register safe_redbeat's metrics on ``registry`` (once; later calls return it)."""
    with _registered_lock:
        metrics = _registered.get(id(registry))
        if metrics is None:
            metrics = SchedulerMetrics(registry, **options)
            _registered[id(registry)] = metrics
        return metrics


def exposition(registry: CollectorRegistry) -> Route:
    """The ``/metrics`` route of ``registry`` (the text or OpenMetrics format, as asked)."""

    def route(accept: str) -> Response:
        encoder, content_type = choose_encoder(accept)
        return Response(200, encoder(registry), content_type)

    return route


class MetricsServer:
    """``/metrics`` (and any ``routes`` given to :func:`serve`) from a thread of this process."""

    def __init__(self, metrics: SchedulerMetrics, server: HttpServer) -> None:
        self.metrics = metrics
        self.http = server

    @property
    def port(self) -> int:
        return self.http.port

    def url(self, path: str = "/metrics") -> str:
        return self.http.url(path)

    def close(self) -> None:
        """Stop serving and disconnect the metrics from the signals."""
        self.http.close()
        with _registered_lock:
            _registered.pop(id(self.metrics.registry), None)
        self.metrics.close()


def serve(
    port: int,
    addr: str = "0.0.0.0",
    scheduler: Any = None,
    *,
    routes: Mapping[str, Route] | None = None,
) -> MetricsServer:
    """Serve this process' safe_redbeat metrics on ``addr:port`` (a registry of their own)
    at ``/metrics``, with ``routes`` beside it; 404 on any other path."""
    registry = CollectorRegistry(auto_describe=False)
    metrics = register(registry)
    if scheduler is not None:
        metrics.watch(scheduler)
    try:
        server = serve_http(addr, port, {**(routes or {}), "/metrics": exposition(registry)})
    except BaseException:
        with _registered_lock:
            _registered.pop(id(registry), None)
        metrics.close()
        raise
    return MetricsServer(metrics, server)
