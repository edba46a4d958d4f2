"""Telling a broker that takes no messages from a message the broker refuses."""

from __future__ import annotations

from typing import Any

import kombu.exceptions
import pytest
import redis.exceptions
from kombu.exceptions import EncodeError, OperationalError

from safe_redbeat.dispatch.publisher import broker_fault

#: kombu 5.7 wraps a failed batch in BatchPublishError; older kombu has no batches, and
#: the test stands in any kombu error for it.
BatchPublishError: Any = getattr(kombu.exceptions, "BatchPublishError", OperationalError)


def wrapped(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


def never_asked() -> bool:
    raise AssertionError("the broker need not be asked")


@pytest.mark.parametrize(
    "cause",
    [
        redis.exceptions.ConnectionError("Connection refused"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        # older redis-py: a plain ResponseError with the code (newer: OutOfMemoryError)
        redis.exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'"),
        *(
            [redis.exceptions.OutOfMemoryError("command not allowed when used memory")]
            if hasattr(redis.exceptions, "OutOfMemoryError")
            else []
        ),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        redis.exceptions.ResponseError(
            "Command # 2 (LPUSH q x) of pipeline caused error: "
            "MISCONF Errors writing to the AOF file"
        ),
        ConnectionRefusedError(111, "Connection refused"),
    ],
)
def test_the_server_refusing_every_write_is_the_broker(cause: BaseException) -> None:
    assert broker_fault(wrapped(BatchPublishError("uncertain"), cause), never_asked)
    assert broker_fault(wrapped(OperationalError(str(cause)), cause), never_asked)


def test_wrongtype_on_one_queue_key_is_that_message() -> None:
    cause = redis.exceptions.ResponseError(
        "Command # 3 (LPUSH poisoned {...}) of pipeline caused error: WRONGTYPE Operation "
        "against a key holding the wrong kind of value"
    )
    assert not broker_fault(wrapped(BatchPublishError("uncertain"), cause), never_asked)


def test_kombus_keyerror_as_a_connection_error_asks_the_broker() -> None:
    """kombu's Redis transport counts KeyError (an unknown compression) as a connection
    error: only a PING tells whether the broker is there."""
    error = wrapped(OperationalError("'zstd-typo'"), KeyError("zstd-typo"))
    assert not broker_fault(error, lambda: True)
    assert broker_fault(error, lambda: False)


@pytest.mark.parametrize(
    "error", [EncodeError("cannot encode"), TypeError("bad args"), KeyError("x")]
)
def test_errors_kombu_raises_before_the_broker_are_the_message(error: BaseException) -> None:
    assert not broker_fault(error, never_asked)
