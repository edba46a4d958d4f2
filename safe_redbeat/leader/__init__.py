"""Leadership: the fenced lease of one shard, its upkeep in the tick, which shards a
replica leads, heartbeats, backoff."""
