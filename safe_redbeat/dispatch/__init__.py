"""One shard's dispatch: read what is due, plan and claim occurrences, publish them,
keep pending records and dead letters."""
