"""Real processes for the tests, the benchmarks and the examples (not part of the wheel).

* :mod:`testbed.process` - what every server process here shares: spawn, PID, log file,
  wait until ready, stop and kill by PID
* :mod:`testbed.redis_server` - a throwaway Redis-compatible server on 127.0.0.1, with
  a wall clock the test sets when started under libfaketime (``ServerClock``)
* :mod:`testbed.beat` - real ``celery beat`` replicas of :mod:`testbed.beatapp`, and a
  broker-side view of the messages they sent
* :mod:`testbed.cluster` - a throwaway Redis Cluster (3 primaries, 1 replica each)
* :mod:`testbed.settings` - the fast lease settings (``FAST``) the tests and benchmarks use
* :mod:`testbed.sentinel` - a throwaway Redis Sentinel deployment (a primary, its replica,
  3 sentinels)
"""
