"""``export [-o FILE]`` and ``import FILE [--dry-run] [--replace]``: backups of every entry
(see :mod:`safe_redbeat.backup` for what is kept and how it is restored)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..backup import InvalidExport, export_schedule, import_schedule
from .context import EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE, Args, CLIError, Context
from .output import emit

__all__ = ["cmd_export", "cmd_import"]


def cmd_export(ctx: Context, args: Args) -> int:
    document = export_schedule(ctx.schedule())
    text = json.dumps(document, indent=1, sort_keys=True) + "\n"
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return EXIT_OK
    path = Path(args.output)
    _write(path, text)
    entries = document["entries"]
    only = sum(1 for item in entries if item["owner"] == "none")
    broken = sum(1 for item in entries if "problem" in item)
    data = {"file": str(path), "entries": len(entries), "redis_only": only, "malformed": broken}
    line = (
        f"exported {len(entries)} entries to {path} ({only} not from beat_schedule or the "
        "loader" + (f"; {broken} cannot be decoded: `import` reports them" if broken else "") + ")"
    )
    emit(args.json, data, line)
    return EXIT_OK


def _write(path: Path, text: str) -> None:
    """``text`` to ``path``, replacing it only once all of it is on disk."""
    scratch: str | None = None
    try:
        handle, scratch = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(scratch, path)
        scratch = None
    except OSError as exc:
        raise CLIError(
            EXIT_USAGE, "file", f"export: cannot write {path}: {exc.strerror or exc}"
        ) from None
    finally:
        if scratch is not None:
            with contextlib.suppress(OSError):
                os.unlink(scratch)


def _read(name: str) -> Any:
    """The JSON document in the file ``name`` (``-``: stdin)."""
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CLIError(EXIT_USAGE, "file", f"import: cannot read {name}: {reason}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CLIError(
            EXIT_USAGE,
            "invalid_export",
            f"import: {name} is not JSON ({exc}); give a file written by `safe-redbeat export`",
        ) from None


def cmd_import(ctx: Context, args: Args) -> int:
    document = _read(args.file)
    try:
        result = import_schedule(
            ctx.schedule(), document, replace=args.replace, dry_run=args.dry_run
        )
    except InvalidExport as exc:
        raise CLIError(EXIT_USAGE, "invalid_export", f"import: {args.file}: {exc}") from None
    data = {
        "created": sorted(result.created),
        "replaced": sorted(result.replaced),
        "unchanged": sorted(result.unchanged),
        "kept": sorted(result.kept),
        "errors": result.errors,
        "complete": result.complete,
        "dry_run": result.dry_run,
        "seconds": round(result.seconds, 3),
    }
    would = "would " if result.dry_run else ""
    lines = [result.summary()]
    if result.replaced:
        lines.append(f"  {would}replace: {', '.join(sorted(result.replaced))}")
    if result.kept:
        lines.append(
            f"  kept (Redis holds them otherwise; --replace overwrites): "
            f"{', '.join(sorted(result.kept))}"
        )
    lines += [f"  error: {error}" for error in result.errors]
    emit(args.json, data, "\n".join(lines))
    return EXIT_OK if result.complete else EXIT_UNHEALTHY
