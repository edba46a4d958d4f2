"""The example Django project's settings, pointed at the test's Redis by ``SRB_*`` env vars
(the same variables testbed/beatapp.py reads; set by BeatProcess).

EXAMPLE_DB_PATH  the sqlite file (read by the example's settings)
SRB_REDIS_URL    redbeat_redis_url and broker_url (SRB_BROKER_URL overrides the broker)
SRB_INSTANCE     safe_redbeat_instance_name
SRB_SETTINGS     JSON object of Celery settings (lowercase), set as CELERY_<NAME>
SRB_WRITE_BACK   SAFE_REDBEAT_WRITE_BACK_SECONDS (default: off)
"""

from __future__ import annotations

import json
import os

from examples.django_celery_beat.settings import *  # noqa: F403

CELERY_BEAT_ENABLE_REMOTE_CONTROL = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_RESULT_EXPIRES = None  # keeps celery.backend_cleanup out of the schedule
SAFE_REDBEAT_WRITE_BACK_SECONDS = float(os.environ.get("SRB_WRITE_BACK") or 0) or None

if os.environ.get("SRB_REDIS_URL"):
    CELERY_REDBEAT_REDIS_URL = os.environ["SRB_REDIS_URL"]
    CELERY_BROKER_URL = os.environ.get("SRB_BROKER_URL") or CELERY_REDBEAT_REDIS_URL
if os.environ.get("SRB_INSTANCE"):
    CELERY_SAFE_REDBEAT_INSTANCE_NAME = os.environ["SRB_INSTANCE"]
for _name, _value in json.loads(os.environ.get("SRB_SETTINGS") or "{}").items():
    globals()[f"CELERY_{_name.upper()}"] = _value
