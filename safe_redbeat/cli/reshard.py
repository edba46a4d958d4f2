"""``reshard --to K``: move the schedule to a layout of K shards (see safe_redbeat.sync.reshard)."""

from __future__ import annotations

from ..sync.reshard import reshard
from .context import EXIT_OK, Args, Context
from .output import emit

__all__ = ["cmd_reshard"]


def cmd_reshard(ctx: Context, args: Args) -> int:
    settings = ctx.settings
    wait = args.wait if args.wait is not None else settings.lease_seconds + settings.retry_seconds
    report = reshard(
        ctx.client,
        ctx.keys,
        args.to,
        app=ctx.app,
        wait_seconds=wait,
        say=lambda line: None if args.json else print(f"safe-redbeat: {line}"),
    )
    emit(
        args.json,
        {
            "from": report.source,
            "to": report.target,
            "entries": report.entries,
            "skipped": report.skipped,
            "pending": report.pending,
            "dead": report.dead,
            "resumed": report.resumed,
            "seconds": round(report.seconds, 3),
        },
        report.summary(),
    )
    return EXIT_OK
