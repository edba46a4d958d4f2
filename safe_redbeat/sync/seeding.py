"""Seeding the schedule: static ``beat_schedule`` entries and the user's loader.

The leader runs this after each acquisition, every ``safe_redbeat_reconcile_seconds``, and
at once when it notices Redis lost the schedule. Every write is fenced by its lease token
and goes through :class:`~safe_redbeat.sync.reconcile.Reconciler` (by diff, never by wipe).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from celery.schedules import crontab
from celery.utils.log import get_logger

from .. import signals
from ..config import Settings
from ..errors import LeaseLost
from ..model.lifecycle import LIFETIME_FIELDS
from ..model.specs import EntrySpec
from ..store.connection import CLIENT_ERRORS, sanitize_text
from ..store.keys import Keys
from ..store.layout import shard_of
from ..store.scripts import Scripts
from .loader import (
    LoaderBusy,
    LoaderError,
    LoaderSlot,
    call_loader,
    parse_specs,
    resolve,
)
from .reconcile import Reconciler, ReconcileResult, removals_held

__all__ = ["Seeder", "default_entries", "static_names"]

logger = get_logger("safe_redbeat")


@dataclass(eq=False)
class Seeder:
    """Reconciles statics and the loader's entries into Redis for the leader."""

    app: Any
    client: Any
    keys: Keys
    scripts: Scripts
    settings: Settings
    _: KW_ONLY
    #: the scheduler's ``_maybe_entry``: a beat_schedule item as a RedBeat entry
    build_entry: Callable[[str, Any], Any]
    monotonic: Callable[[], float] = time.monotonic
    #: shared by the shards of one replica: one loader call in flight at a time
    loader_slot: LoaderSlot = field(default_factory=LoaderSlot)
    #: this seeder's shard of a layout of ``shards``: only the entries it holds are written
    shard: int = 0
    shards: int = 1
    #: the loader's ownership SET of every shard of the layout: the removal guard counts
    #: the whole schedule, whichever shard reconciles
    owned_keys: tuple[str, ...] = ()
    #: set when a claim found entries gone from Redis: seed again at the next tick
    reseed_needed: bool = field(default=False, init=False)
    _next_reconcile: float = field(default=0.0, init=False)
    _shadowed: frozenset[str] = field(default=frozenset(), init=False)
    #: rejected loader items already logged (name, problem): each is logged once
    _rejected: frozenset[tuple[str, str]] = field(default=frozenset(), init=False)

    def seed(self, token: str, renew: Callable[[], None], reason: str = "") -> None:
        """Reconcile everything now, then mark the schedule as seeded."""
        if reason:
            logger.info("beat: reconciling the schedule: %s", reason)
        self.reconcile(token, renew)
        self.client.set(self.keys.seeded, "1")
        self.reseed_needed = False

    def keep_seeded(self, token: str, renew: Callable[[], None]) -> None:
        """Seed again if entries vanished, else reconcile every ``reconcile_seconds``."""
        if self.reseed_needed:
            self.seed(token, renew, "entries vanished from Redis (evicted or deleted)")
        elif self.monotonic() >= self._next_reconcile:
            self.reconcile(token, renew)

    def reconcile(self, token: str, renew: Callable[[], None]) -> None:
        """Static ``beat_schedule`` entries, then (if configured) the user's loader.

        Nothing but the lease and Redis failing escapes: an unexpected error in one source
        is logged with its traceback, and the schedule stays as it is.
        """
        static_specs, static_errors = self.static_specs()
        with _contained("beat_schedule"):
            statics = self._reconciler("beat_schedule", self.keys.statics).run(
                self._mine(static_specs), token=token, errors=static_errors, renew=renew
            )
            _log(statics)
        if self.settings.loader:
            result = ReconcileResult("loader", complete=False)
            with _contained("loader") as failure:
                result = self._load(token, renew, reserved=static_names(self.app))
            if failure:
                result.errors.append(failure[0])
            _log(result)
            self.client.set(self.keys.reconcile, result.to_json())
        self._next_reconcile = self.monotonic() + self.settings.reconcile_seconds

    def _reconciler(self, source: str, owned_key: str) -> Reconciler:
        return Reconciler(
            self.client, self.keys, self.scripts, self.app, source=source, owned_key=owned_key
        )

    def _load(self, token: str, renew: Callable[[], None], reserved: set[str]) -> ReconcileResult:
        reconciler = self._reconciler("loader", self.keys.loader)
        versions = reconciler.snapshot()  # before the loader reads the database
        try:
            items = call_loader(
                resolve(self.settings.loader),
                self.app,
                timeout=self.settings.loader_timeout_seconds,
                wait_step=self.settings.retry_seconds,
                on_wait=renew,
                monotonic=self.monotonic,
                slot=self.loader_slot,
            )
        except LoaderError as exc:
            (logger.warning if isinstance(exc, LoaderBusy) else logger.error)(
                "beat: loader %r failed: %s; the current schedule is kept, nothing removed",
                self.settings.loader,
                sanitize_text(str(exc)),
            )
            return ReconcileResult("loader", errors=[str(exc)], complete=False)
        # every row is checked (an error anywhere makes the load incomplete in each shard)
        load = parse_specs(items, reserved=reserved)
        self._say_shadowed(load.shadowed)
        rejected = {
            name: problem
            for name, problem in load.rejected.items()
            if shard_of(name, self.shards) == self.shard
        }
        self._say_rejected(rejected)
        owned = self._owned_everywhere(versions)
        removing = len(owned - {spec.name for spec in load.specs} - set(load.rejected))
        return reconciler.run(
            self._mine(load.specs),
            versions=versions,
            token=token,
            errors=load.errors,
            rejected=rejected,
            renew=renew,
            hold_removals=removals_held(
                removing, len(owned), self.settings.max_removals(len(owned))
            ),
        )

    def _owned_everywhere(self, mine: Mapping[str, int]) -> set[str]:
        """The names the loader owns in every shard (this one's from its snapshot)."""
        owned = set(mine)
        for key in self.owned_keys:
            if key != self.keys.loader:
                owned.update(self.client.sscan_iter(key, count=1000))
        return owned

    def _say_shadowed(self, names: list[str]) -> None:
        shadowed = frozenset(names)
        if shadowed and shadowed != self._shadowed:
            logger.warning(
                "beat: loader rows also defined in beat_schedule (or Celery's own entries): "
                "%s; the static entries are kept",
                ", ".join(repr(name) for name in sorted(shadowed)[:10]),
            )
        self._shadowed = shadowed

    def _say_rejected(self, rejected: Mapping[str, str]) -> None:
        """One ERROR per loader item that cannot be scheduled, when it first shows up."""
        now = frozenset(rejected.items())
        for name, problem in sorted(now - self._rejected):
            logger.error(
                "beat: loader: %s; skipped (Redis keeps what it had for %r; the other "
                "entries are reconciled)",
                sanitize_text(problem),
                name,
            )
        self._rejected = now

    def _mine(self, specs: list[EntrySpec]) -> list[EntrySpec]:
        """The specs of entries this seeder's shard holds."""
        return [spec for spec in specs if shard_of(spec.name, self.shards) == self.shard]

    def static_specs(self) -> tuple[list[EntrySpec], list[str]]:
        """``beat_schedule`` (and Celery's default entries) as EntrySpecs, and errors."""
        desired = static_entries(self.app)
        specs: list[EntrySpec] = []
        errors: list[str] = []
        for name, spec in desired.items():
            try:
                # lifetime fields (safe_redbeat's own keys) are not Celery entry arguments
                lifetime: dict[str, Any] = {}
                if isinstance(spec, Mapping):
                    lifetime = {k: spec[k] for k in LIFETIME_FIELDS if k != "at" and k in spec}
                    spec = {k: v for k, v in spec.items() if k not in lifetime}
                entry = self.build_entry(name, spec)
                specs.append(
                    EntrySpec.build(
                        name,
                        entry.task,
                        entry.schedule,
                        args=entry.args or (),
                        kwargs=entry.kwargs or {},
                        options=entry.options or {},
                        enabled=getattr(entry, "enabled", True),
                        **lifetime,
                    )
                )
            except Exception as exc:
                errors.append(f"static entry {name!r} in beat_schedule is invalid: {exc}")
        return specs, errors


def static_entries(app: Any) -> dict[str, Any]:
    """``beat_schedule`` plus Celery's default entries, by name."""
    desired: dict[str, Any] = dict(app.conf.beat_schedule or {})
    desired.update(default_entries(app, desired))
    return desired


def static_names(app: Any) -> set[str]:
    """Names the static entries hold: a loader row or write-through of one is left out."""
    return set(static_entries(app))


def default_entries(app: Any, desired: dict[str, Any]) -> dict[str, Any]:
    """Celery's own entries (``celery.backend_cleanup``) unless the user defined them."""
    if (
        app.conf.result_expires
        and not app.backend.supports_autoexpire
        and "celery.backend_cleanup" not in desired
    ):
        return {
            "celery.backend_cleanup": {
                "task": "celery.backend_cleanup",
                "schedule": crontab("0", "4", "*"),
                "options": {"expires": 12 * 3600},
            }
        }
    return {}


#: What a source's reconcile lets through to the scheduler: lease loss and Redis failing.
_PASS_THROUGH: tuple[type[BaseException], ...] = (LeaseLost, *CLIENT_ERRORS)


@contextmanager
def _contained(source: str) -> Iterator[list[str]]:
    """Log and swallow an unexpected error of one source's reconcile (yields its text)."""
    failure: list[str] = []
    try:
        yield failure
    except _PASS_THROUGH:
        raise
    except Exception as exc:
        logger.exception("beat: %s: reconcile failed; the schedule is kept as it is", source)
        failure.append(f"reconcile failed: {type(exc).__name__}: {exc}")


def _log(result: ReconcileResult) -> None:
    held = len(result.held) if result.source == "loader" else None
    signals.reconciled.send(result.source, result=result, removals_held=held)
    for error in result.errors:
        logger.error("beat: %s: %s", result.source, sanitize_text(error))
    if result.held:
        logger.error(
            "beat: %s: the load would remove %d entries it owns (%s); none was removed. If the "
            "source really lost them, apply with `safe-redbeat sync --allow-removals`; the "
            "limit is safe_redbeat_loader_max_removals.",
            result.source,
            len(result.held),
            ", ".join(repr(name) for name in result.held[:5])
            + (", ..." if len(result.held) > 5 else ""),
        )
    changed = result.created or result.updated or result.removed or result.conflicts
    (logger.info if changed or result.errors else logger.debug)("beat: %s", result.summary())
