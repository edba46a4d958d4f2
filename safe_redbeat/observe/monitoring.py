"""Monitoring switched on by settings when ``celery beat`` starts the scheduler.

``safe_redbeat_metrics_port`` (default None, off) serves Prometheus ``/metrics`` from each
replica (the ``metrics`` extra) on ``safe_redbeat_metrics_addr``;
``safe_redbeat_log_format = "json"`` writes the scheduler's own lines as JSON objects
(see jsonlog.py). They are read with the other settings (:class:`~safe_redbeat.Settings`).

:func:`setup` runs from Celery's ``beat_init`` signal, i.e. once in the process that runs
the scheduler (never for the throw-away instance Celery builds for its banner).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from celery.signals import beat_init
from celery.utils.log import get_logger

from ..config import Settings
from ..errors import ConfigurationError

__all__ = ["Monitoring", "setup"]

logger = get_logger("safe_redbeat")

PORT = "safe_redbeat_metrics_port"


@dataclass
class Monitoring:
    """What :func:`setup` started for one scheduler."""

    settings: Settings
    server: Any = None  # safe_redbeat.metrics.MetricsServer

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def setup(scheduler: Any) -> Monitoring:
    """Start the metrics server and JSON logs as configured for ``scheduler``'s app."""
    settings: Settings = scheduler.safe_settings
    monitoring = Monitoring(settings)
    instance = settings.instance_name
    if settings.log_format == "json":
        from . import jsonlog

        jsonlog.install(instance)
    if settings.metrics_port is not None:
        try:
            from .. import metrics
        except ImportError as exc:
            raise ConfigurationError(
                f"{PORT} is set but prometheus-client is missing: "
                "pip install 'safe-redbeat[metrics]'",
                PORT,
            ) from exc
        monitoring.server = metrics.serve(
            settings.metrics_port, settings.metrics_addr, scheduler=scheduler
        )
        logger.info(
            "beat: serving metrics on http://%s:%d/metrics",
            settings.metrics_addr,
            monitoring.server.port,
        )
    return monitoring


#: what setup() started, per running scheduler
active: weakref.WeakKeyDictionary[Any, Monitoring] = weakref.WeakKeyDictionary()


def _on_beat_init(sender: Any = None, **_: Any) -> None:
    from ..scheduler import SafeRedBeatScheduler

    scheduler = getattr(sender, "scheduler", None)
    if not isinstance(scheduler, SafeRedBeatScheduler):
        return
    try:
        active[scheduler] = setup(scheduler)
    except (ConfigurationError, OSError) as exc:
        # Celery's Signal.send logs and swallows an Exception; a bad setting must stop
        # beat at start-up like every other invalid setting.
        logger.critical("beat: monitoring not started: %s", exc)
        raise SystemExit(f"safe_redbeat: {exc}") from exc


beat_init.connect(_on_beat_init, weak=False, dispatch_uid="safe_redbeat.monitoring")
