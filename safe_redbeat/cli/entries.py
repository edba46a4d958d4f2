"""The schedule commands (``list``, ``show``, ``add``, ``update``, ``rm``, ``enable``,
``disable``, ``run-now``) through :class:`~safe_redbeat.schedule.Schedule`, and ``sync``.

Every write is versioned: ``update`` without ``--expected-version`` still changes only the
version it read (and re-applies its change if another writer came first), so it never
overwrites fields someone else changed meanwhile.
"""

from __future__ import annotations

from ..errors import EntryNotFound, InvalidEntry, SafeRedBeatError, VersionConflict
from ..model.codec import solar_schedule
from ..model.lifecycle import LIFETIME_FIELDS, OVERLAP_ALLOW, OVERLAP_SKIP, PARKED
from ..model.specs import EntryInfo, EntrySpec, ScheduleLike
from ..schedule import MalformedEntry
from .context import (
    EXIT_APP,
    EXIT_CONFLICT,
    EXIT_OK,
    EXIT_UNHEALTHY,
    EXIT_USAGE,
    Args,
    CLIError,
    Context,
)
from .output import (
    emit,
    entry_json,
    entry_text,
    iso,
    last_run,
    parked_json,
    running_lines,
    schedule_text,
    table,
    when,
)

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


def cmd_list(ctx: Context, args: Args) -> int:
    found = list(ctx.schedule().scan(args.pattern))
    entries = sorted((e for e in found if isinstance(e, EntryInfo)), key=lambda e: e.name)
    parked = {
        m.name: InvalidEntry(m.name, m.field, m.problem)
        for m in found
        if isinstance(m, MalformedEntry)
    }
    if args.json:
        data = [entry_json(e) for e in entries]
        data += [parked_json(name, error) for name, error in sorted(parked.items())]
        emit(True, {"entries": data}, "")
    elif not entries and not parked:
        print("no entries" + ("" if args.pattern == "*" else f" match {args.pattern!r}"))
    else:
        rows: list[tuple[object, ...]] = [
            (
                e.name,
                e.state,
                e.task,
                "once" if e.lifecycle.at is not None else schedule_text(e.schedule),
                e.version,
                when(e.next_run_at),
                when(last_run(e)),
                e.total_run_count,
            )
            for e in entries
        ]
        rows += [
            (name, f"{PARKED}: {error.field}: {error.problem}", "-", "-", "-", "-", "-", "-")
            for name, error in sorted(parked.items())
        ]
        headers = ("NAME", "STATE", "TASK", "SCHEDULE", "VERSION", "NEXT RUN", "LAST RUN", "RUNS")
        print(table(headers, rows))
    return EXIT_OK


def cmd_show(ctx: Context, args: Args) -> int:
    try:
        info = ctx.schedule().get(args.name)
    except InvalidEntry as exc:
        if exc.field == "name":
            raise
        # the leader parks an entry it cannot decode: show that, with the reason
        text = f"name:      {args.name}\nstate:     {PARKED}: {exc}"
        emit(args.json, parked_json(args.name, exc), text)
        return EXIT_OK
    runs = ctx.schedule().runs(info.name) if info.lifecycle.has_overlap_policy else []
    emit(
        args.json,
        {**entry_json(info), "running": [run.to_json() for run in runs]},
        (entry_text(info) + "".join("\n" + line for line in running_lines(info, runs))),
    )
    return EXIT_OK


def _spec(args: Args, base: EntryInfo | None) -> EntrySpec:
    """What ``add`` asks for, or ``base`` with the fields ``update`` was given."""
    schedule: ScheduleLike | None = args.every if args.every is not None else args.cron
    if args.solar is not None:
        schedule = solar_schedule(args.name, *args.solar)
    options = {} if base is None else dict(base.options)
    if args.options is not None:
        options = dict(args.options)
    if args.queue is not None:
        options["queue"] = args.queue
    given = {
        name: getattr(args, name)
        for name in LIFETIME_FIELDS
        if getattr(args, name, None) not in (None, False)
    }
    if base is None:
        if schedule is None and args.at is None:  # the command line already requires one
            raise CLIError(EXIT_USAGE, "usage", "add needs --every, --cron, --solar or --at")
        return EntrySpec.build(
            args.name,
            args.task,
            schedule,
            args=args.args or (),
            kwargs=args.kwargs,
            options=options,
            enabled=not args.disabled,
            **given,
        )
    lifetime = {name: getattr(base.lifecycle, name) for name in LIFETIME_FIELDS}
    if schedule is not None:
        lifetime["at"] = None  # a periodic schedule replaces a one-off
    if given.get("overlap") == OVERLAP_ALLOW and "max_runtime" not in given:
        lifetime["max_runtime"] = None  # allow tracks no run: nothing to bound
    lifetime.update(given)
    return EntrySpec.build(
        base.name,
        base.task if args.task is None else args.task,
        None if lifetime["at"] is not None else base.schedule if schedule is None else schedule,
        args=base.args if args.args is None else args.args,
        kwargs=base.kwargs if args.kwargs is None else args.kwargs,
        options=options,
        enabled=base.enabled if args.enabled is None else args.enabled,
        **lifetime,
    )


def _report(args: Args, verb: str, info: EntryInfo) -> None:
    text = f"{verb} {info.name!r} (version {info.version}); next run {when(info.next_run_at)}"
    emit(args.json, entry_json(info), text)


def cmd_add(ctx: Context, args: Args) -> int:
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


def cmd_update(ctx: Context, args: Args) -> int:
    read: list[EntryInfo] = []

    def change(current: EntryInfo) -> EntrySpec:
        read.append(current)
        return _spec(args, current)

    try:
        info = ctx.schedule().update(args.name, change, expected_version=args.expected_version)
    except (EntryNotFound, InvalidEntry, VersionConflict):
        raise
    except SafeRedBeatError as exc:  # the entry changed on each attempt
        raise CLIError(EXIT_CONFLICT, "version_conflict", str(exc), name=args.name) from None
    _report(args, "updated" if info.version != read[-1].version else "unchanged", info)
    return EXIT_OK


def cmd_rm(ctx: Context, args: Args) -> int:
    version = ctx.schedule().delete(args.name, expected_version=args.expected_version)
    data = {"name": args.name, "deleted": True, "version": version}
    emit(args.json, data, f"removed {args.name!r} (was version {version})")
    return EXIT_OK


def cmd_set_enabled(ctx: Context, args: Args) -> int:
    schedules = ctx.schedule()
    if args.command == "enable":
        info = schedules.enable(args.name, expected_version=args.expected_version)
    else:
        info = schedules.disable(args.name, expected_version=args.expected_version)
    _report(args, f"{args.command}d", info)
    return EXIT_OK


def cmd_run_now(ctx: Context, args: Args) -> int:
    schedules = ctx.schedule()
    requested = schedules.run_now(args.name, expected_version=args.expected_version)
    data: dict[str, object] = {"name": args.name, "requested_at": iso(requested)}
    text = f"requested a run of {args.name!r} at {when(requested)}; the leader sends it"
    info = schedules.get(args.name)
    runs = schedules.runs(args.name) if info.lifecycle.has_overlap_policy else []
    if runs:
        # a manual run follows the entry's overlap policy too
        data["running"] = [run.to_json() for run in runs]
        going = ", ".join(run.task_id for run in runs)
        if info.lifecycle.overlap == OVERLAP_SKIP:
            text += f" unless a run still goes then (overlap=skip; going now: {going})"
        else:
            text += f", revoking the runs going then (overlap=replace; going now: {going})"
    emit(args.json, data, text)
    return EXIT_OK


def cmd_sync(ctx: Context, args: Args) -> int:
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
