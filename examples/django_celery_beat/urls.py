"""The admin, where periodic tasks are edited as with django-celery-beat's scheduler."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
