"""The schedule under test: static entries (beat_schedule) and entries written to Redis."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import replace
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.schedules import crontab
from celery.schedules import schedule as interval
from redbeat.schedulers import RedBeatSchedulerEntry, get_redis

from safe_redbeat import Schedule
from safe_redbeat.model.lifecycle import Lifecycle
from tests.chaos.model import WorkloadEntry

#: The entry that carries args, kwargs and options through every fault.
PAYLOAD_ENTRY = "s-payload"
PAYLOAD_ARGS = (1, "two", {"three": 3})
PAYLOAD_KWARGS = {"k": [1, 2], "name": "payload"}
PAYLOAD_OPTIONS = {"priority": 5, "headers": {"x-chaos": "payload"}}

#: The entry whose messages the broker-refuse-one fault makes the broker refuse: it is the
#: only one sent to its own queue, whose key the fault turns into a SET for a while.
REFUSED_ENTRY = "s-refused"
REFUSED_QUEUE = "chaos-refused"


def build_specs(
    rng: random.Random,
    *,
    statics: int,
    dynamics: int,
    crons: int,
    periods: tuple[int, int] = (1, 5),
    refused: bool = False,
    lifetime: dict[str, Any] | None = None,
) -> dict[str, WorkloadEntry]:
    """``statics`` + ``dynamics`` interval entries of ``periods`` (1-5 s), ``crons``
    every-minute ones; with ``refused``, :data:`REFUSED_ENTRY` too (every 2 s, to its own
    queue). ``lifetime``: fields every entry gets (an overlap policy)."""
    specs = _build_specs(rng, statics, dynamics, crons, periods, refused)
    if lifetime:
        specs = {name: replace(spec, lifetime=dict(lifetime)) for name, spec in specs.items()}
    return specs


def _build_specs(
    rng: random.Random,
    statics: int,
    dynamics: int,
    crons: int,
    periods: tuple[int, int],
    refused: bool,
) -> dict[str, WorkloadEntry]:
    specs: dict[str, WorkloadEntry] = {}
    for i in range(statics):
        period = float(rng.randint(*periods))
        specs[f"s-int{int(period)}-{i:04d}"] = WorkloadEntry(
            f"s-int{int(period)}-{i:04d}", "interval", period, "static"
        )
    for i in range(dynamics):
        period = float(rng.randint(*periods))
        name = f"d-int{int(period)}-{i:04d}"
        specs[name] = WorkloadEntry(name, "interval", period, "dynamic")
    for i in range(crons):
        name = f"{'s' if i % 2 == 0 else 'd'}-cron-{i:03d}"
        specs[name] = WorkloadEntry(name, "crontab", 60.0, "static" if i % 2 == 0 else "dynamic")
    specs[PAYLOAD_ENTRY] = WorkloadEntry(
        PAYLOAD_ENTRY,
        "interval",
        2.0,
        "static",
        args=PAYLOAD_ARGS,
        kwargs=PAYLOAD_KWARGS,
        options=PAYLOAD_OPTIONS,
    )
    if refused:
        specs[REFUSED_ENTRY] = WorkloadEntry(
            REFUSED_ENTRY, "interval", 2.0, "static", options={"queue": REFUSED_QUEUE}
        )
    return specs


def static_schedule(specs: Iterable[WorkloadEntry]) -> dict[str, dict[str, object]]:
    """SRB_SCHEDULE for the replicas."""
    return {spec.name: spec.beat_spec() for spec in specs if spec.source == "static"}


def redbeat_app(redis_url: str, redis_options: dict[str, Any] | None = None) -> Celery:
    """A Celery app the harness uses to write entries in RedBeat's format.

    ``redis_options``: more ``redbeat_redis_options`` (a Sentinel deployment's).
    """
    app = Celery("chaos-writer", set_as_current=False)
    app.conf.update(
        broker_url=redis_url,
        redbeat_redis_url=redis_url,
        redbeat_redis_options={"retry_period": 30, **(redis_options or {})},
        timezone="UTC",
        result_expires=None,
    )
    return app


def write_dynamic(app: Celery, specs: Iterable[WorkloadEntry]) -> int:
    """Write entries directly to Redis, as RedBeat's own API does (``entry.save()``); the
    lifetime fields as another program would, in the hash field ``lifecycle``."""
    count = 0
    for spec in specs:
        if spec.source != "dynamic":
            continue
        run_every = (
            interval(timedelta(seconds=spec.period)) if spec.kind == "interval" else crontab()
        )
        entry = RedBeatSchedulerEntry(
            spec.name,
            "noop",
            run_every,
            args=list(spec.args),
            kwargs=dict(spec.kwargs),
            options=dict(spec.options),
            app=app,
        )
        entry.save()
        if spec.lifetime:
            lifecycle = Lifecycle.build(spec.name, **spec.lifetime).encode()
            get_redis(app).hset(entry.key, "lifecycle", lifecycle)
        count += 1
    return count


def write_dynamic_sharded(app: Celery, specs: Iterable[WorkloadEntry]) -> int:
    """Write entries through :class:`safe_redbeat.Schedule`, which puts each in its shard
    (RedBeat's ``entry.save()`` only knows the unsharded keys). A new entry is due one
    period after it is written, as with ``entry.save()``."""
    count = 0
    with Schedule(app) as schedule:
        for spec in specs:
            if spec.source != "dynamic":
                continue
            run_every = spec.period if spec.kind == "interval" else crontab()
            schedule.upsert(
                spec.name,
                "noop",
                run_every,
                args=spec.args,
                kwargs=spec.kwargs,
                options=spec.options,
                **spec.lifetime,
            )
            count += 1
    return count
