"""Logs and the start of monitoring (metrics server, JSON logs) in a beat process."""
