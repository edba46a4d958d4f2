"""Loader hooks for tests: their behaviour is switched through module globals."""

from __future__ import annotations

import time
from typing import Any

#: what ``load`` returns (or raises, if an exception instance)
RESULT: Any = []
CALLS: list[float] = []


def load(app: Any) -> Any:
    CALLS.append(time.monotonic())
    if isinstance(RESULT, BaseException):
        raise RESULT
    return RESULT() if callable(RESULT) else RESULT


def hang(app: Any) -> list[Any]:
    time.sleep(3600)
    return []
