"""The schedule's concepts, free of Redis: entry specs, lifetime rules and slots,
validation, RedBeat's entry format, occurrences."""
