"""The example's one app: the tasks the periodic tasks name."""
