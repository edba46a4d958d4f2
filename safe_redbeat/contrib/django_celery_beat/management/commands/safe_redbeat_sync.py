"""``python manage.py safe_redbeat_sync [--dry-run] [--allow-removals]``: reconcile Redis
with the table once.

Versioned and safe next to running beat replicas (see ``safe_redbeat.writethrough``).
Prints what was (or would be) created, updated and removed, and each row that could not
be scheduled; exits 1 if there was any, a write conflicted, or removals were held back
(more than ``safe_redbeat_loader_max_removals``, or an empty table: ``--allow-removals``
applies them).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from safe_redbeat.store.connection import sanitize_url
from safe_redbeat.writethrough import sync_once

from ... import LOADER_PATH
from ...row_signals import celery_app, schedules_for


class Command(BaseCommand):  # type: ignore[misc]  # django is untyped
    help = "Reconcile safe_redbeat's Redis schedule with the PeriodicTask table once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="show what would change, write nothing"
        )
        parser.add_argument(
            "--allow-removals",
            action="store_true",
            help="apply removals beyond safe_redbeat_loader_max_removals (after you checked)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        app = celery_app()
        loader = app.conf.get("safe_redbeat_loader") or LOADER_PATH
        schedules = schedules_for(app)
        self.stdout.write(
            f"Redis: {sanitize_url(app.redbeat_conf.redis_url)} "
            f"(prefix {app.redbeat_conf.key_prefix!r}); loader: {loader}"
        )
        result = sync_once(
            schedules,
            loader,
            dry_run=options["dry_run"],
            allow_removals=options["allow_removals"],
        )
        verb = "would " if result.dry_run else ""
        for label, names in (
            ("create", result.created),
            ("update", result.updated),
            ("remove", result.removed),
        ):
            for name in names:
                self.stdout.write(f"  {verb}{label} {name}")
        for name in result.held:
            self.stdout.write(f"  held removal {name} (--allow-removals applies it)")
        for conflict in result.conflicts:
            self.stdout.write(f"  conflict {conflict} (changed meanwhile; left alone)")
        for error in result.errors:
            self.stderr.write(f"  error: {error}")
        for name in sorted(result.rejected):
            self.stderr.write(
                f"  error: {result.rejected[name]} (skipped; Redis keeps it as it was)"
            )
        self.stdout.write(result.summary())
        problems = []
        if result.rejected:
            problems.append(f"{len(result.rejected)} rows could not be scheduled")
        if result.errors:
            problems.append(f"{len(result.errors)} problems made the load incomplete")
        if result.conflicts:
            problems.append(f"{len(result.conflicts)} writes conflicted")
        if result.held:
            problems.append(f"{len(result.held)} removals were held back")
        if problems:
            raise CommandError(" and ".join(problems) + " (see above)")
