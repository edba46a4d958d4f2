"""The admin with the adapter, through Django's test client: the beat page (who may see it,
what it shows, its actions behind CSRF and a confirmation) and the periodic task form
refusing rows safe_redbeat cannot schedule. Real Django, the suite's Redis."""

from __future__ import annotations

import re
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import redis

pytest.importorskip("django_celery_beat")

from safe_redbeat.model.occurrence import Occurrence
from tests.support import django_project

pytestmark = pytest.mark.integration

BEAT = "/admin/django_celery_beat/periodictask/beat/"
APPLY = BEAT + "apply-removals/"
DEAD = BEAT + "dead/"
ADD = "/admin/django_celery_beat/periodictask/add/"


@pytest.fixture
def project(redis_url: str) -> Iterator[Path]:
    db_path = django_project.setup()
    from django.contrib.auth.models import User
    from django.test import override_settings

    from safe_redbeat.contrib.django_celery_beat.row_signals import close_schedules

    django_project.use_redis(redis_url)
    User.objects.all().delete()
    with override_settings(ALLOWED_HOSTS=["testserver"]):
        try:
            yield db_path
        finally:
            close_schedules()


def user(name: str, *perms: str, staff: bool = True) -> Any:
    from django.contrib.auth.models import Permission, User

    who = User.objects.create_user(name, password="pw", is_staff=staff)
    for codename in perms:
        who.user_permissions.add(Permission.objects.get(codename=codename))
    return User.objects.get(pk=who.pk)  # permissions are cached per object


def client(who: Any = None, *, csrf: bool = False) -> Any:
    from django.test import Client

    c = Client(enforce_csrf_checks=csrf)
    if who is not None:
        c.force_login(who)
    return c


def csrf_token(c: Any, url: str) -> str:
    page = c.get(url).content.decode()
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, "no CSRF token in the page"
    return match.group(1)


def dead_letter(r: redis.Redis, task_id: str, entry: str = "nightly") -> None:
    occurrence = Occurrence(
        task_id=task_id, entry=entry, task="reports.ping", args=[], kwargs={}, options={},
        scheduled=1_800_000_000, fence=1, attempts=5, last_error="kombu refused it",
    )  # fmt: skip
    r.hset("redbeat::dead", task_id, occurrence.to_json())


def test_an_anonymous_user_or_a_user_without_permission_is_refused(project: Path) -> None:
    for url in (BEAT, APPLY):
        response = client().get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    not_staff = user("visitor", "view_periodictask", staff=False)
    assert client(not_staff).get(BEAT).status_code == 302
    staff = user("clerk")  # staff, no periodic task permission
    assert client(staff).get(BEAT).status_code == 403
    viewer = user("viewer", "view_periodictask")
    assert client(viewer).get(BEAT).status_code == 200
    for url, data in ((APPLY, {"confirm": "yes"}), (DEAD, {"action": "drop", "task_id": "x"})):
        assert client(viewer).post(url, data).status_code == 403, url


def test_the_beat_page_shows_the_leader_replicas_and_dead_letters(
    project: Path, redis_client: redis.Redis
) -> None:
    from examples.django_celery_beat import celery_app
    from safe_redbeat import SafeRedBeatScheduler
    from tests.support.inprocess import FakeClock

    leader = SafeRedBeatScheduler(app=celery_app, monotonic=FakeClock())
    try:
        leader.tick()
        assert leader.is_leader
        dead_letter(redis_client, "t-1")
        page = client(user("viewer", "view_periodictask")).get(BEAT).content.decode()
        fence = str(redis_client.get("redbeat::lock") or "").split(" ")[0]
    finally:
        leader.close()
    assert fence.isdigit() and fence in page
    assert leader.binding.settings.instance_name in page and "leader" in page
    assert re.search(r"\d+\.\ds</td>", page), "no lease time left shown"
    assert "t-1" in page and "kombu refused it" in page
    assert 'id="pending">0<' in page
    assert "Retry selected" not in page, "actions shown to a user who may not change"
    changelist = client(user("admin", "view_periodictask")).get(
        "/admin/django_celery_beat/periodictask/"
    )
    assert BEAT in changelist.content.decode(), "no link from the periodic task list"
    assert "Periodic tasks won't be dispatched" not in changelist.content.decode()


def test_dead_letters_are_retried_and_dropped_with_a_csrf_token_only(
    project: Path, redis_client: redis.Redis
) -> None:
    dead_letter(redis_client, "t-1")
    dead_letter(redis_client, "t-2")
    operator = user("operator", "view_periodictask", "change_periodictask")
    c = client(operator, csrf=True)
    assert c.post(DEAD, {"action": "retry", "task_id": "t-1"}).status_code == 403  # no token
    assert redis_client.hexists("redbeat::dead", "t-1")
    token = csrf_token(c, BEAT)
    response = c.post(DEAD, {"action": "retry", "task_id": "t-1", "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert not redis_client.hexists("redbeat::dead", "t-1")
    record = str(redis_client.hget("redbeat::pending", "t-1"))
    assert '"entry":"nightly"' in record and "attempts" not in record  # attempts reset
    c.post(DEAD, {"action": "drop", "task_id": ["t-2", "gone"], "csrfmiddlewaretoken": token})
    assert redis_client.hlen("redbeat::dead") == 0
    assert "1 dead letters dropped; 1 changed meanwhile or were gone" in c.get(
        BEAT
    ).content.decode().replace("\n", " ")
    assert c.get(DEAD).status_code == 405


def test_held_removals_are_applied_only_after_the_confirmation(
    project: Path, redis_client: redis.Redis
) -> None:
    from django.core.management import CommandError, call_command
    from django.test import override_settings
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every = IntervalSchedule.objects.create(every=60, period="seconds")
    for name in ("a", "b"):
        PeriodicTask.objects.create(name=name, task="reports.ping", interval=every)
    call_command("safe_redbeat_sync", stdout=StringIO())
    with override_settings(SAFE_REDBEAT_WRITE_THROUGH=False):
        PeriodicTask.objects.all().delete()
    from examples.django_celery_beat import celery_app
    from safe_redbeat.contrib.django_celery_beat.row_signals import schedules_for
    from safe_redbeat.sync.seeding import Seeder

    with pytest.raises(CommandError, match="2 removals were held back"):
        call_command("safe_redbeat_sync", stdout=StringIO(), stderr=StringIO())
    # the leader records what it held; here, as its reconcile writes it
    schedules = schedules_for(celery_app)
    seeder = Seeder(
        celery_app, schedules.client, schedules.keys, schedules.shards()[0].scripts,
        schedules.settings, build_entry=lambda name, spec: spec,
    )  # fmt: skip
    seeder.reconcile("", lambda: None)
    operator = user("operator", "view_periodictask", "change_periodictask")
    c = client(operator, csrf=True)
    page = c.get(BEAT).content.decode()
    assert "Held removals (2)" in page and APPLY in page
    confirm = c.get(APPLY).content.decode()
    assert "Yes, apply the removals" in confirm and "<li>a</li>" in confirm
    token = csrf_token(c, APPLY)
    c.post(APPLY, {"csrfmiddlewaretoken": token})  # no confirm=yes: the question again
    assert redis_client.exists("redbeat:a", "redbeat:b") == 2
    response = c.post(APPLY, {"csrfmiddlewaretoken": token, "confirm": "yes"})
    assert response.status_code == 302
    assert redis_client.exists("redbeat:a", "redbeat:b") == 0


def test_the_form_refuses_a_row_safe_redbeat_cannot_schedule(
    project: Path, redis_client: redis.Redis
) -> None:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every = IntervalSchedule.objects.create(every=60, period="seconds")
    c = client(user("operator", "view_periodictask", "add_periodictask", "change_periodictask"))
    form = {
        "name": "report", "task": "reports.ping", "interval": every.pk, "args": "[]",
        "kwargs": "{}", "headers": "{}", "enabled": "on", "description": "",
    }  # fmt: skip
    for field, value, shown in (
        ("headers", "{not json", "headers: is not valid JSON"),
        ("name", "a::b", "name: must not contain"),
        (
            "headers",
            '{"safe_redbeat_overlap": "skip"}',
            "headers.safe_redbeat_max_runtime: is needed with overlap &#x27;skip&#x27;",
        ),
    ):
        response = c.post(ADD, {**form, field: value})
        assert response.status_code == 200, f"{field}: the form was accepted"
        page = response.content.decode()
        # shown at the field (Django renders the field's errors in its own row)
        row = page[page.index('class="form-row') : page.index(f'name="{field}"')]
        assert "safe_redbeat cannot schedule this task: " + shown in row.rsplit("form-row", 1)[-1]
    assert not PeriodicTask.objects.exists()
    assert c.post(ADD, form).status_code == 302
    assert PeriodicTask.objects.filter(name="report").exists()
