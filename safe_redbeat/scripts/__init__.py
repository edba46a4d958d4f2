"""The Lua scripts, one file each with its KEYS/ARGV/return contract at the top.

They ship as plain ``.lua`` files so a service in another language can ``EVAL`` them and get
the same fencing and versioning guarantees.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

__all__ = ["Scripts", "source"]


@cache
def source(name: str) -> str:
    """The text of ``<name>.lua``."""
    return (files(__package__) / f"{name}.lua").read_text(encoding="utf-8")


class Scripts:
    """The scripts registered on one client: EVALSHA, reloaded after NOSCRIPT."""

    def __init__(self, client: Any) -> None:
        self.acquire = client.register_script(source("acquire"))
        self.renew = client.register_script(source("renew"))
        self.release = client.register_script(source("release"))
        self.claim = client.register_script(source("claim"))
        self.upsert = client.register_script(source("upsert"))
        self.remove = client.register_script(source("remove"))
        self.run_now = client.register_script(source("run_now"))
        self.versions = client.register_script(source("versions"))
        self.diff = client.register_script(source("diff"))
        self.due = client.register_script(source("due"))
        self.move = client.register_script(source("move"))
