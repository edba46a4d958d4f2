#!/usr/bin/env python
"""``python examples/django_celery_beat/manage.py migrate`` (from anywhere)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # the project is the package examples.django_celery_beat: put the repository on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_celery_beat.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
