"""One exception hierarchy for everything safe_redbeat raises."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "EntryNotFound",
    "FencedOut",
    "InvalidEntry",
    "LeaseLost",
    "Resharding",
    "SafeRedBeatError",
    "ScheduleTooCostly",
    "VersionConflict",
]


class SafeRedBeatError(Exception):
    """Base class of every error raised by safe_redbeat."""


class ConfigurationError(SafeRedBeatError, ValueError):
    """A setting, or a combination of settings, is invalid.

    ``settings`` names the settings involved so the message can be acted on.
    """

    def __init__(self, message: str, *settings: str) -> None:
        super().__init__(message)
        self.settings = settings


class LeaseLost(SafeRedBeatError):
    """This replica no longer holds the lease; ``reason`` says how it was found out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FencedOut(LeaseLost):
    """Redis rejected a write because the lease key no longer holds our token."""


class InvalidEntry(SafeRedBeatError, ValueError):
    """A schedule entry (from Redis, a loader or an API call) cannot be used.

    ``key`` is the entry's name or Redis key and ``field`` the offending part.
    """

    def __init__(self, key: str, field: str, problem: str) -> None:
        super().__init__(f"entry {key!r}: {field}: {problem}")
        self.key = key
        self.field = field
        self.problem = problem


class VersionConflict(SafeRedBeatError):
    """The entry changed since it was read: ``current_version`` is what Redis holds."""

    def __init__(self, name: str, expected: int | None, current_version: int | None) -> None:
        super().__init__(
            f"entry {name!r}: expected version {expected}, Redis holds {current_version}"
        )
        self.name = name
        self.expected = expected
        self.current_version = current_version


class EntryNotFound(SafeRedBeatError, KeyError):
    """No entry of that name exists in Redis."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"entry {self.name!r} not found"


class Resharding(SafeRedBeatError):
    """The schedule is being moved to another shard layout (``safe-redbeat reshard``).

    Writes are refused until the move ends; retry in a few seconds.
    """


class ScheduleTooCostly(SafeRedBeatError, ValueError):
    """Computing a schedule's next slot took longer than its budget.

    Raised by the slot search (``lifecycle.slot_after``) so that one entry cannot hold a
    tick past the renew deadline; the leader parks the entry, a writer refuses it.
    """
