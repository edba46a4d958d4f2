#!/usr/bin/env python
"""``python examples/django_celery_beat/manage.py migrate`` (from anywhere)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # The project is the package examples.django_celery_beat: the repository goes on the
    # path *instead of* this script's folder, which Python puts first and whose celery.py
    # would then shadow the celery package ("cannot import name 'Celery' from partially
    # initialized module 'celery'").
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(here.parents[1]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_celery_beat.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
