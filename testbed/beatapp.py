"""Celery app for beat subprocesses in tests; configured only from ``SRB_*`` env vars.

SRB_REDIS_URL   redbeat_redis_url (required)
SRB_BROKER_URL  broker_url (default: SRB_REDIS_URL)
SRB_KEY_PREFIX  redbeat_key_prefix (optional)
SRB_INSTANCE    safe_redbeat_instance_name (optional)
SRB_SETTINGS    JSON object merged into app.conf last (overrides everything above)
SRB_SCHEDULE    JSON object {name: {"task": str, "every": seconds | "cron": "m h dom mon dow",
                "args": [...], "kwargs": {...}, "options": {...}, and safe_redbeat's lifetime
                fields "run_immediately", "max_runs", "tz", "overlap", "max_runtime",
                "start_time"/"expires" (ISO)}}
SRB_TRACK_RUNS  "1": ``safe_redbeat.worker.track_runs(app)`` (set by testbed.worker)
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from celery.schedules import BaseSchedule, crontab, schedule


def _json_env(name: str) -> dict[str, Any]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise TypeError(f"${name} must be a JSON object, got {type(value).__name__}")
    return value


def build_entry(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    if "every" in spec:
        run_every: BaseSchedule = schedule(timedelta(seconds=float(spec["every"])))
    elif "cron" in spec:
        fields = str(spec["cron"]).split()
        if len(fields) != 5:
            raise ValueError(f"entry {name!r}: cron needs 5 fields, got {spec['cron']!r}")
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        run_every = crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    else:
        raise ValueError(f"entry {name!r}: needs 'every' or 'cron'")
    entry: dict[str, Any] = {"task": spec["task"], "schedule": run_every}
    if "args" in spec:
        entry["args"] = tuple(spec["args"])
    if "kwargs" in spec:
        entry["kwargs"] = dict(spec["kwargs"])
    if "options" in spec:
        entry["options"] = dict(spec["options"])
    for key in ("run_immediately", "max_runs", "tz", "overlap", "max_runtime"):
        if key in spec:
            entry[key] = spec[key]
    for key in ("start_time", "expires"):
        if key in spec:
            entry[key] = datetime.fromisoformat(spec[key])
    return entry


def build_schedule(specs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: build_entry(name, spec) for name, spec in specs.items()}


def create_app() -> Celery:
    redis_url = os.environ.get("SRB_REDIS_URL")
    if not redis_url:
        raise RuntimeError("testbed.beatapp needs $SRB_REDIS_URL (set by BeatProcess)")
    app = Celery("beatapp")
    app.conf.update(
        broker_url=os.environ.get("SRB_BROKER_URL") or redis_url,
        redbeat_redis_url=redis_url,
        timezone="UTC",
        beat_enable_remote_control=False,
        broker_connection_retry_on_startup=True,
        # No result backend: keep celery.backend_cleanup out of the schedule.
        result_expires=None,
        beat_schedule=build_schedule(_json_env("SRB_SCHEDULE")),
    )
    if os.environ.get("SRB_KEY_PREFIX"):
        app.conf.redbeat_key_prefix = os.environ["SRB_KEY_PREFIX"]
    if os.environ.get("SRB_INSTANCE"):
        app.conf.safe_redbeat_instance_name = os.environ["SRB_INSTANCE"]
    app.conf.update(_json_env("SRB_SETTINGS"))
    return app


app = create_app()
if os.environ.get("SRB_TRACK_RUNS") == "1":
    from safe_redbeat.worker import track_runs

    track_runs(app)


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


# Registered as "noop"; the explicit call keeps mypy --strict happy (celery is untyped).
noop = app.task(name="noop")(_noop)


#: where ``record`` appends its runs (testbed.worker.RAN)
_RAN = "testbed:ran"


def _record(request: Any, args: Any, kwargs: Any) -> None:
    """Append this run to the list testbed.worker reads (in the schedule's database)."""
    import time

    import redis

    delivery = dict(request.delivery_info or {})
    headers = dict(getattr(request, "headers", None) or {})
    run = {
        "id": request.id,
        "task": request.task,
        "entry": getattr(request, "safe_redbeat_entry", None),
        "scheduled": getattr(request, "safe_redbeat_scheduled", None),
        "retries": request.retries,
        "priority": delivery.get("priority"),
        "routing_key": delivery.get("routing_key"),
        "eta": request.eta,
        "expires": request.expires,
        "tenant": getattr(request, "tenant", None) or headers.get("tenant"),
        "args": list(args),
        "kwargs": dict(kwargs),
        "at": time.time(),
    }
    client = redis.Redis.from_url(os.environ["SRB_REDIS_URL"])
    try:
        client.rpush(_RAN, json.dumps(run))
    finally:
        client.close()


def _run_and_record(self: Any, *args: Any, **kwargs: Any) -> None:
    _record(self.request, args, kwargs)


def _fail_twice_then_record(self: Any, *args: Any, **kwargs: Any) -> None:
    """Fails twice (retried 0.2 s later each time), then records its run."""
    if self.request.retries < 2:
        raise self.retry(countdown=0.2)
    _record(self.request, args, kwargs)


def _run_slowly(self: Any, seconds: float = 5.0) -> None:
    """Records its start, sleeps ``seconds``, records its end (testbed.worker.spans)."""
    import time

    _record(self.request, (), {"phase": "start", "seconds": seconds})
    time.sleep(seconds)
    _record(self.request, (), {"phase": "end", "seconds": seconds})


record = app.task(name="record", bind=True)(_run_and_record)
slow = app.task(name="slow", bind=True)(_run_slowly)
flaky = app.task(name="flaky", bind=True, max_retries=3, acks_late=True)(_fail_twice_then_record)
