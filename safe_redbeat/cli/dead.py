"""``dead list|retry|drop``: occurrences whose publish kept failing (``<prefix>:dead``).

``retry`` moves a record back to the pending hash with its attempts reset: the leader
publishes it at its next tick, with the same task id. ``drop`` deletes it. Both are a
compare-and-set on the record read (``move.lua``), so they are safe next to a leader and
next to another operator: a record that changed meanwhile is reported, not touched.
"""

from __future__ import annotations

import argparse
import dataclasses
from datetime import datetime, timezone
from typing import Any

from ..outbox import DeadLetter, read_dead_letters
from ..scripts import Move, MoveCode
from .context import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, CLIError, Context
from .output import emit, table

__all__ = ["cmd_dead"]


def _row(letter: DeadLetter) -> dict[str, Any]:
    o = letter.occurrence
    if o is None:
        return {"task_id": letter.task_id, "malformed": letter.problem, "raw": letter.raw[:200]}
    return {
        "task_id": letter.task_id,
        "entry": o.entry,
        "task": o.task,
        "scheduled": datetime.fromtimestamp(o.scheduled, tz=timezone.utc).isoformat(),
        "attempts": o.attempts,
        "last_error": o.last_error,
    }


def cmd_dead(ctx: Context, args: argparse.Namespace) -> int:
    letters = read_dead_letters(ctx.client, ctx.keys)
    if args.action == "list":
        rows = [_row(letter) for letter in letters]
        text = (
            table(
                ("TASK ID", "ENTRY", "SCHEDULED", "ATTEMPTS", "LAST ERROR"),
                [
                    (
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
    chosen = letters if args.all else [t for t in letters if t.task_id in set(args.task_ids)]
    missing = set(args.task_ids or ()) - {letter.task_id for letter in chosen}
    if missing and not args.all:
        raise CLIError(
            EXIT_NOT_FOUND, "not_found", f"no dead letter with task id {sorted(missing)[0]!r}"
        )
    moves: list[Move] = []
    for letter in chosen:
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
        moves.append(Move(letter.task_id, letter.raw, new))
    done: list[str] = []
    changed: list[str] = []
    if moves:
        destination = ctx.keys.pending if args.action == "retry" else ctx.keys.dead
        reply = ctx.scripts().move(ctx.keys.dead, destination, moves)
        for move, code in zip(moves, reply.codes, strict=True):
            (done if code is MoveCode.DONE else changed).append(move.task_id)
    verb = "retried" if args.action == "retry" else "dropped"
    text = f"{verb} {len(done)} dead letters"
    if changed:
        text += f"; {len(changed)} changed meanwhile and were left alone"
    emit(args.json, {verb: done, "changed": changed}, text)
    return EXIT_OK
