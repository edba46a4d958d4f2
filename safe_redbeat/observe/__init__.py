"""What an operator sees of a beat process: the HTTP server and its probes, logs, monitoring."""
