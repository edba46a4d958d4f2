"""``testbed.beatapp`` with sentry-sdk's Celery integration watching beat tasks.

Envelopes never leave the process over the network: a transport appends each item's
payload (check-ins included) as one JSON line to ``$SRB_SENTRY_FILE``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.transport import Transport

from testbed.beatapp import app, noop

__all__ = ["app", "noop"]


class FileTransport(Transport):
    def capture_envelope(self, envelope: Envelope) -> None:
        with open(os.environ["SRB_SENTRY_FILE"], "a", encoding="utf-8") as out:
            for item in envelope.items:
                payload: Any = item.payload.json
                if payload is not None:
                    out.write(json.dumps({"type": item.type, "payload": payload}) + "\n")


sentry_sdk.init(
    dsn="http://public@127.0.0.1:9/1",
    transport=FileTransport,
    default_integrations=False,
    integrations=[CeleryIntegration(monitor_beat_tasks=True)],
)
