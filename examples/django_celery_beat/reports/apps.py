from django.apps import AppConfig


class ReportsConfig(AppConfig):  # type: ignore[misc]  # django is untyped
    name = "examples.django_celery_beat.reports"
    label = "reports"
