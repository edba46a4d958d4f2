"""``dead list|retry|drop``: occurrences whose publish kept failing (``<prefix>:dead``).

``retry`` moves a record back to the pending hash with its attempts reset: the leader
publishes it at its next tick, with the same task id. ``drop`` deletes it. Both are a
compare-and-set on the record read (``move.lua``), so they are safe next to a leader and
next to another operator: a record that changed meanwhile is reported, not touched.

With a sharded layout each shard has its own dead and pending hashes: every command reads
all of them, and a record moves only within its own shard (one slot on Redis Cluster).
Retry and drop wait while ``reshard`` moves the schedule.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

from ..dispatch.outbox import DeadLetter, read_dead_letters
from ..schedule import ShardStore
from ..store.scripts import Move, MoveCode
from .context import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_RESHARD,
    EXIT_USAGE,
    Args,
    CLIError,
    Context,
)
from .output import emit, table

__all__ = ["cmd_dead"]


def _row(letter: DeadLetter, shard: int | None) -> dict[str, Any]:
    o = letter.occurrence
    found: dict[str, Any] = {} if shard is None else {"shard": shard}
    if o is None:
        return {
            **found,
            "task_id": letter.task_id,
            "malformed": letter.problem,
            "raw": letter.raw[:200],
        }
    return {
        **found,
        "task_id": letter.task_id,
        "entry": o.entry,
        "task": o.task,
        "scheduled": datetime.fromtimestamp(o.scheduled, tz=timezone.utc).isoformat(),
        "attempts": o.attempts,
        "last_error": o.last_error,
    }


def cmd_dead(ctx: Context, args: Args) -> int:
    layout = ctx.layout()
    shards = ctx.schedule().shards(layout)
    found = [
        (shard, letter) for shard in shards for letter in read_dead_letters(ctx.client, shard.keys)
    ]
    if args.action == "list":
        many = len(shards) > 1
        rows = [_row(letter, shard.index if many else None) for shard, letter in found]
        shard_column = ("SHARD",) if many else ()
        text = (
            table(
                (*shard_column, "TASK ID", "ENTRY", "SCHEDULED", "ATTEMPTS", "LAST ERROR"),
                [
                    (
                        *([r["shard"]] if many else []),
                        r["task_id"],
                        r.get("entry", "(malformed)"),
                        r.get("scheduled", "-"),
                        r.get("attempts", "-"),
                        r.get("last_error", r.get("malformed", "")),
                    )
                    for r in rows
                ],
            )
            if rows
            else "no dead letters"
        )
        emit(args.json, {"dead": rows}, text)
        return EXIT_OK
    if not args.all and not args.task_ids:
        raise CLIError(EXIT_USAGE, "usage", f"dead {args.action}: give task ids or --all")
    if layout.moving:
        raise CLIError(
            EXIT_RESHARD,
            "resharding",
            f"dead {args.action}: the schedule is being resharded ({layout.describe()}); "
            "nothing was changed: retry once `safe-redbeat reshard` finished",
        )
    wanted = set(args.task_ids or ())
    chosen = found if args.all else [(s, t) for s, t in found if t.task_id in wanted]
    missing = wanted - {letter.task_id for _shard, letter in chosen}
    if missing and not args.all:
        raise CLIError(
            EXIT_NOT_FOUND, "not_found", f"no dead letter with task id {sorted(missing)[0]!r}"
        )
    moves: dict[int, list[Move]] = {}
    for shard, letter in chosen:
        new = ""
        if args.action == "retry":
            if letter.occurrence is None:
                raise CLIError(
                    EXIT_USAGE,
                    "malformed",
                    f"dead letter {letter.task_id!r} cannot be published ({letter.problem}); "
                    "drop it",
                )
            fresh = dataclasses.replace(letter.occurrence, attempts=0, last_error="", raw="")
            new = fresh.to_json()
        moves.setdefault(shard.index, []).append(Move(letter.task_id, letter.raw, new))
    done: list[str] = []
    changed: list[str] = []
    for index, shard_moves in moves.items():
        codes = _move(shards[index], args.action, shard_moves)
        for move, code in zip(shard_moves, codes, strict=True):
            (done if code is MoveCode.DONE else changed).append(move.task_id)
    verb = "retried" if args.action == "retry" else "dropped"
    text = f"{verb} {len(done)} dead letters"
    if changed:
        text += f"; {len(changed)} changed meanwhile and were left alone"
    emit(args.json, {verb: done, "changed": changed}, text)
    return EXIT_OK


def _move(shard: ShardStore, action: str, moves: list[Move]) -> list[MoveCode]:
    """Retry (dead -> pending) or drop ``moves`` within one shard's keys."""
    keys = shard.keys
    destination = keys.pending if action == "retry" else keys.dead
    return list(shard.scripts.move(keys.dead, destination, moves).codes)
