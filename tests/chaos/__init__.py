"""Reliability suite: real beat replicas, real faults, an occurrence-level oracle.

``python -m tests.chaos --duration 600 --write-docs`` runs the long version and rewrites
the results table of ``docs/reliability.md``; ``tests/chaos/test_*.py`` are the short
versions run by pytest (mark ``chaos``).
"""
