"""The schedule commands (``list``, ``show``, ``add``, ``update``, ``rm``, ``enable``,
``disable``, ``run-now``) through :class:`~safe_redbeat.schedule.Schedule`, and ``sync``.

Every write is versioned: ``update`` without ``--expected-version`` still changes only the
version it read (and re-applies its change if another writer came first), so it never
overwrites fields someone else changed meanwhile.
"""

from __future__ import annotations

import argparse

from ..errors import EntryNotFound, VersionConflict
from ..schedule import MalformedEntry
from ..specs import EntryInfo, EntrySpec, ScheduleLike
from .context import (
    EXIT_APP,
    EXIT_CONFLICT,
    EXIT_OK,
    EXIT_UNHEALTHY,
    EXIT_USAGE,
    CLIError,
    Context,
)
from .output import emit, entry_json, entry_text, iso, schedule_text, table, when

__all__ = [
    "cmd_add",
    "cmd_list",
    "cmd_rm",
    "cmd_run_now",
    "cmd_set_enabled",
    "cmd_show",
    "cmd_sync",
    "cmd_update",
]

#: ``update`` re-reads and re-applies its change this often when another writer wins.
UPDATE_ATTEMPTS = 20


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    found = list(ctx.schedule().scan(args.pattern))
    entries = sorted((e for e in found if isinstance(e, EntryInfo)), key=lambda e: e.name)
    malformed = sorted((e for e in found if isinstance(e, MalformedEntry)), key=lambda e: e.name)
    if args.json:
        data = {
            "entries": [entry_json(e) for e in entries],
            "malformed": [
                {"name": m.name, "field": m.field, "problem": m.problem} for m in malformed
            ],
        }
        emit(True, data, "")
    elif not entries and not malformed:
        print("no entries" + ("" if args.pattern == "*" else f" match {args.pattern!r}"))
    else:
        rows: list[tuple[str, str, str, str, object, str, str]] = [
            (
                e.name,
                e.task,
                schedule_text(e.schedule),
                "yes" if e.enabled else "no",
                e.version,
                when(e.next_run_at),
                when(e.last_run_at),
            )
            for e in entries
        ]
        rows += [
            (m.name, "MALFORMED", f"{m.field}: {m.problem}", "-", "-", "-", "-") for m in malformed
        ]
        print(
            table(("NAME", "TASK", "SCHEDULE", "ENABLED", "VERSION", "NEXT RUN", "LAST RUN"), rows)
        )
    return EXIT_OK


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    info = ctx.schedule().get(args.name)
    emit(args.json, entry_json(info), entry_text(info))
    return EXIT_OK


def _spec(args: argparse.Namespace, base: EntryInfo | None) -> EntrySpec:
    """What ``add`` asks for, or ``base`` with the fields ``update`` was given."""
    schedule: ScheduleLike | None = args.every if args.every is not None else args.cron
    options = {} if base is None else dict(base.options)
    if args.options is not None:
        options = dict(args.options)
    if args.queue is not None:
        options["queue"] = args.queue
    if base is None:
        if schedule is None:  # argparse already requires one of them
            raise CLIError(EXIT_USAGE, "usage", "add needs --every or --cron")
        return EntrySpec.build(
            args.name,
            args.task,
            schedule,
            args.args or (),
            args.kwargs,
            options,
            enabled=not args.disabled,
        )
    return EntrySpec.build(
        base.name,
        base.task if args.task is None else args.task,
        base.schedule if schedule is None else schedule,
        base.args if args.args is None else args.args,
        base.kwargs if args.kwargs is None else args.kwargs,
        options,
        enabled=base.enabled if args.enabled is None else args.enabled,
    )


def _report(args: argparse.Namespace, verb: str, info: EntryInfo) -> None:
    text = f"{verb} {info.name!r} (version {info.version}); next run {when(info.next_run_at)}"
    emit(args.json, entry_json(info), text)


def cmd_add(ctx: Context, args: argparse.Namespace) -> int:
    schedules = ctx.schedule()
    spec = _spec(args, None)
    try:
        current = schedules.get(spec.name)
    except EntryNotFound:
        pass
    else:
        raise CLIError(
            EXIT_CONFLICT,
            "version_conflict",
            f"entry {spec.name!r} already exists (version {current.version}); use update",
            name=spec.name,
            current_version=current.version,
        )
    # expected_version=0: if it was created since we looked, that one wins
    _report(args, "added", schedules.put(spec, expected_version=0))
    return EXIT_OK


def cmd_update(ctx: Context, args: argparse.Namespace) -> int:
    schedules = ctx.schedule()
    for _attempt in range(UPDATE_ATTEMPTS):
        current = schedules.get(args.name)
        expected = current.version if args.expected_version is None else args.expected_version
        if expected != current.version:
            raise VersionConflict(args.name, expected, current.version)
        spec = _spec(args, current)
        try:
            info = schedules.put(spec, expected_version=expected)
        except VersionConflict:
            if args.expected_version is not None:
                raise
            continue  # another writer came first: apply the change to its version
        _report(args, "updated" if info.version != current.version else "unchanged", info)
        return EXIT_OK
    raise CLIError(
        EXIT_CONFLICT,
        "version_conflict",
        f"entry {args.name!r} changed on each of {UPDATE_ATTEMPTS} attempts",
        name=args.name,
    )


def cmd_rm(ctx: Context, args: argparse.Namespace) -> int:
    version = ctx.schedule().delete(args.name, expected_version=args.expected_version)
    data = {"name": args.name, "deleted": True, "version": version}
    emit(args.json, data, f"removed {args.name!r} (was version {version})")
    return EXIT_OK


def cmd_set_enabled(ctx: Context, args: argparse.Namespace) -> int:
    schedules = ctx.schedule()
    if args.command == "enable":
        info = schedules.enable(args.name, expected_version=args.expected_version)
    else:
        info = schedules.disable(args.name, expected_version=args.expected_version)
    _report(args, f"{args.command}d", info)
    return EXIT_OK


def cmd_run_now(ctx: Context, args: argparse.Namespace) -> int:
    requested = ctx.schedule().run_now(args.name, expected_version=args.expected_version)
    data = {"name": args.name, "requested_at": iso(requested)}
    text = f"requested a run of {args.name!r} at {when(requested)}; the leader sends it"
    emit(args.json, data, text)
    return EXIT_OK


def cmd_sync(ctx: Context, args: argparse.Namespace) -> int:
    from ..writethrough import sync_once

    loader = ctx.settings.loader
    if not loader:
        raise CLIError(
            EXIT_APP, "configuration", "safe_redbeat_loader is not configured: nothing to sync"
        )
    try:
        # as beat does before it calls the loader (runs django.setup() on Django)
        ctx.app.loader.import_default_modules()
    except Exception as exc:
        raise CLIError(
            EXIT_APP, "app", f"importing the app's modules: {type(exc).__name__}: {exc}"
        ) from None
    result = sync_once(
        ctx.schedule(), loader, dry_run=args.dry_run, allow_removals=args.allow_removals
    )
    data = {
        "source": result.source,
        "created": sorted(result.created),
        "updated": sorted(result.updated),
        "removed": sorted(result.removed),
        "unchanged": result.unchanged,
        "conflicts": sorted(result.conflicts),
        "held": sorted(result.held),
        "errors": result.errors,
        "complete": result.complete,
        "dry_run": result.dry_run,
        "seconds": round(result.seconds, 3),
    }
    lines = [result.summary()]
    for label, verb in (
        ("created", "create"),
        ("updated", "update"),
        ("removed", "remove"),
        ("conflicts", "conflicts"),
        ("held", "held"),
    ):
        names: list[str] = getattr(result, label)
        if names:
            shown = f"would {verb}" if result.dry_run and verb != label else label
            lines.append(f"  {shown}: {', '.join(sorted(names))}")
    lines += [f"  error: {error}" for error in result.errors]
    emit(args.json, data, "\n".join(lines))
    failed = result.errors or not result.complete or result.held
    return EXIT_UNHEALTHY if failed else EXIT_OK
