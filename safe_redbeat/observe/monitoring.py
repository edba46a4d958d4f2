"""Monitoring switched on by settings when ``celery beat`` starts the scheduler.

``safe_redbeat_metrics_port`` (default None, off)
    Serve Prometheus ``/metrics`` on this port from each replica (the ``metrics`` extra).
``safe_redbeat_metrics_addr`` (default ``"0.0.0.0"``)
    Address the metrics server binds.
``safe_redbeat_log_format`` (default ``"text"``)
    ``"json"``: the scheduler's own lines as JSON objects (see jsonlog.py).

:func:`setup` runs from Celery's ``beat_init`` signal, i.e. once in the process that runs
the scheduler (never for the throw-away instance Celery builds for its banner).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from celery.signals import beat_init
from celery.utils.log import get_logger

from ..errors import ConfigurationError

__all__ = ["LOG_FORMATS", "Monitoring", "MonitoringSettings", "setup"]

logger = get_logger("safe_redbeat")

LOG_FORMATS = ("text", "json")
PORT = "safe_redbeat_metrics_port"
ADDR = "safe_redbeat_metrics_addr"
LOG_FORMAT = "safe_redbeat_log_format"


@dataclass(frozen=True)
class MonitoringSettings:
    metrics_port: int | None = None
    metrics_addr: str = "0.0.0.0"
    log_format: str = "text"

    @classmethod
    def from_app(cls, app: Any) -> MonitoringSettings:
        conf = app.conf
        port = conf.get(PORT)
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535
        ):
            raise ConfigurationError(
                f"{PORT} must be a TCP port number (0-65535) or None (off), got {port!r}", PORT
            )
        addr = conf.get(ADDR, "0.0.0.0")
        if not isinstance(addr, str) or not addr:
            raise ConfigurationError(f"{ADDR} must be an address to bind, got {addr!r}", ADDR)
        log_format = conf.get(LOG_FORMAT, "text")
        if log_format not in LOG_FORMATS:
            raise ConfigurationError(
                f"{LOG_FORMAT} must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}",
                LOG_FORMAT,
            )
        return cls(metrics_port=port, metrics_addr=addr, log_format=log_format)


@dataclass
class Monitoring:
    """What :func:`setup` started for one scheduler."""

    settings: MonitoringSettings
    server: Any = None  # safe_redbeat.metrics.MetricsServer

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def setup(scheduler: Any) -> Monitoring:
    """Start the metrics server and JSON logs as configured for ``scheduler``'s app."""
    settings = MonitoringSettings.from_app(scheduler.app)
    monitoring = Monitoring(settings)
    instance = scheduler.safe_settings.instance_name
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
