"""The ``PeriodicTask`` admin, extended: rows that cannot be scheduled are refused in the
form, and a beat page shows who leads and what is pending, held or dead-lettered.

Imported by Django's admin autodiscovery; this app comes after ``django_celery_beat`` in
``INSTALLED_APPS``, so django-celery-beat's ``PeriodicTaskAdmin`` is registered already and
is replaced by :class:`SafePeriodicTaskAdmin`, a subclass (every page and action it has
stays).

The beat page (``.../periodictask/beat/``, linked from the periodic task list) needs a
staff user with ``django_celery_beat.view_periodictask``; its actions (apply held removals,
retry or drop dead letters) need ``django_celery_beat.change_periodictask`` and are POST
forms with Django's CSRF check; applying removals asks for a confirmation first.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django_celery_beat.admin import PeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from safe_redbeat.errors import InvalidEntry
from safe_redbeat.sync.loader import item_spec
from safe_redbeat.sync.seeding import static_names

from .mapping import OVERLAP_HEADERS, row_to_entry

__all__ = ["SafePeriodicTaskAdmin", "SafePeriodicTaskForm", "schedulable_error"]

#: The form field an entry field's problem belongs to.
_FIELD_OF = {
    "args": "args",
    "kwargs": "kwargs",
    "headers": "headers",
    "task": "task",
    "name": "name",
    "expires": "expires",
    "start_time": "start_time",
    "tz": "crontab",
    "at": "clocked",
    "options": "queue",
    "queue": "queue",
    "priority": "priority",
    "exchange": "exchange",
    "routing_key": "routing_key",
    # the overlap policy is set in the row's headers JSON (the table has no field for it)
    "overlap": "headers",
    "max_runtime": "headers",
}
_SCHEDULES = ("interval", "crontab", "solar", "clocked")


def schedulable_error(row: Any, app: Any = None) -> InvalidEntry | None:
    """Why ``row`` (saved or not) cannot be scheduled by safe_redbeat, or None."""
    if app is not None and row.name in static_names(app):
        return None  # a beat_schedule entry of that name is kept (reported when loaded)
    try:
        item_spec(row_to_entry(row))
    except InvalidEntry as exc:
        return exc
    return None


def _form_field(row: Any, field: str) -> str | None:
    head = field.split(".", 1)[0].split("[", 1)[0]
    if head in _FIELD_OF:
        return _FIELD_OF[head]
    if head in ("schedule", *_SCHEDULES, "max_runs", "run_immediately"):
        chosen = [name for name in _SCHEDULES if getattr(row, f"{name}_id", None) is not None]
        return chosen[0] if len(chosen) == 1 else None
    return None


def _label(field: str) -> str:
    """The name the admin user knows a field by: the overlap fields are keys of the row's
    ``headers`` (``headers.safe_redbeat_max_runtime``)."""
    head, dot, rest = field.partition(".")
    if head == "lifecycle":
        head, dot, rest = rest.partition(".")
    header = OVERLAP_HEADERS.get(head)
    return field if header is None else f"headers.{header}{dot}{rest}"


class SafePeriodicTaskForm(PeriodicTaskAdmin.form):  # type: ignore[misc]
    """django-celery-beat's form, plus: the row must be one safe_redbeat can schedule."""

    def _post_clean(self) -> None:
        super()._post_clean()
        if self.errors:
            return  # the row's own errors first
        from .row_signals import celery_app

        try:
            app = celery_app()
        except Exception:  # no Celery app configured in this process: check the row alone
            app = None
        error = schedulable_error(self.instance, app)
        if error is None:
            return
        field = _form_field(self.instance, error.field)
        message = f"safe_redbeat cannot schedule this task: {_label(error.field)}: {error.problem}"
        self.add_error(field if field in self.fields else None, message)


class SafePeriodicTaskAdmin(PeriodicTaskAdmin):  # type: ignore[misc]  # django is untyped
    form = SafePeriodicTaskForm
    change_list_template = "safe_redbeat/periodictask_change_list.html"

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        from django.conf import settings

        scheduler = str(getattr(settings, "CELERY_BEAT_SCHEDULER", "") or "")
        context = dict(extra_context or {})
        # django-celery-beat warns unless its own scheduler is set: ours schedules the rows
        context["wrong_scheduler"] = not (
            "safe_redbeat" in scheduler or "DatabaseScheduler" in scheduler
        )
        context["beat_url"] = reverse("admin:safe_redbeat_beat")
        return admin.ModelAdmin.changelist_view(self, request, context)

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view  # staff only, never cached, CSRF-protected
        return [
            path("beat/", wrap(self.beat_view), name="safe_redbeat_beat"),
            path(
                "beat/apply-removals/",
                wrap(self.apply_removals_view),
                name="safe_redbeat_apply_removals",
            ),
            path("beat/dead/", wrap(self.dead_letters_view), name="safe_redbeat_dead"),
            *super().get_urls(),
        ]

    # -- the beat page -------------------------------------------------------------------

    def _check(self, request: HttpRequest, *, change: bool) -> None:
        if not self.has_view_permission(request) or (
            change and not self.has_change_permission(request)
        ):
            raise PermissionDenied

    def _schedules(self) -> Any:
        from .row_signals import celery_app, schedules_for

        return schedules_for(celery_app())

    def beat_view(self, request: HttpRequest) -> HttpResponse:
        self._check(request, change=False)
        from .beat import read_beat

        context = {
            **self.admin_site.each_context(request),
            "title": "Beat",
            "opts": self.model._meta,
            "beat": read_beat(self._schedules()),
            "can_change": self.has_change_permission(request),
        }
        return TemplateResponse(request, "safe_redbeat/beat.html", context)

    def apply_removals_view(self, request: HttpRequest) -> HttpResponse:
        self._check(request, change=True)
        from .beat import apply_removals, read_beat

        if request.method == "GET" or request.POST.get("confirm") != "yes":
            view = read_beat(self._schedules())
            context = {
                **self.admin_site.each_context(request),
                "title": "Apply held removals?",
                "opts": self.model._meta,
                "beat": view,
            }
            return TemplateResponse(request, "safe_redbeat/apply_removals.html", context)
        result = apply_removals(self._schedules())
        level = messages.ERROR if result.errors or result.conflicts else messages.SUCCESS
        self.message_user(request, result.summary(), level=level)
        return HttpResponseRedirect(reverse("admin:safe_redbeat_beat"))

    def dead_letters_view(self, request: HttpRequest) -> HttpResponse:
        self._check(request, change=True)
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        from .beat import move_dead_letters

        action = request.POST.get("action", "")
        task_ids = request.POST.getlist("task_id")
        if action not in ("retry", "drop") or not task_ids:
            self.message_user(request, "Choose dead letters and retry or drop.", messages.WARNING)
        else:
            moved, missed = move_dead_letters(self._schedules(), action, task_ids)
            verb = "retried (the leader sends them again)" if action == "retry" else "dropped"
            text = f"{moved} dead letters {verb}"
            if missed:
                text += f"; {missed} changed meanwhile or were gone, and were left alone"
            self.message_user(request, text, messages.SUCCESS if not missed else messages.WARNING)
        return HttpResponseRedirect(reverse("admin:safe_redbeat_beat"))


if admin.site.is_registered(PeriodicTask):
    admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, SafePeriodicTaskAdmin)
