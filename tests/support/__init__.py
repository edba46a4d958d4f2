"""Helpers for the tests; the server and beat processes they start are in testbed/."""

from __future__ import annotations

from safe_redbeat.store.keys import Keys

#: The key names under RedBeat's default prefix, which every test app keeps.
KEYS = Keys(prefix="redbeat:", lease="redbeat::lock")
