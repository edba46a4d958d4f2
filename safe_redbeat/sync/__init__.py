"""Bringing entries into Redis: beat_schedule and the loader by diff, and moving the
schedule between layouts."""
