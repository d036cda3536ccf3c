"""`make bench-memory`: memory stays bounded when data grows (a big shard, many keys)."""
