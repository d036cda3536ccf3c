"""`make bench-memory`: memory stays bounded when data grows (a shard streamed, a listing of
many keys)."""
