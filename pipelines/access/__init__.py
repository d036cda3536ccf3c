"""Access patterns: random (map-style), shards and objects (iterable-style), and the loaders."""
