"""The reacquire backoff: tenacity's exponential wait with jitter, bounded."""

from __future__ import annotations

import warnings

from safe_redbeat.leader.backoff import Backoff


def test_backoff_grows_from_the_first_wait_and_stays_under_the_cap() -> None:
    backoff = Backoff(first=2.0, cap=30.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated tenacity arguments
        delays = [backoff.delay(attempt) for attempt in range(1, 12)]
    assert 2.0 <= delays[0] <= 4.0
    assert all(2.0 <= d <= 30.0 for d in delays)
    assert delays[-1] == 30.0
    assert delays[3] > delays[0]
