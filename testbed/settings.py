"""Scheduler settings the tests and the benchmarks share."""

from __future__ import annotations

LEASE = 3.0
RENEW = 2.0
RETRY = 0.5
SOCKET_TIMEOUT = 1.0
BACKOFF_MAX = 1.0

#: Lease settings that make failover take seconds, not tens of seconds.
FAST = {
    "safe_redbeat_lease_seconds": LEASE,
    "safe_redbeat_renew_seconds": RENEW,
    "safe_redbeat_retry_seconds": RETRY,
    "safe_redbeat_socket_timeout": SOCKET_TIMEOUT,
    "safe_redbeat_backoff_max_seconds": BACKOFF_MAX,
}
