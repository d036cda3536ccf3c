"""Training and measurement: configuration, the epoch loop, timing, outputs."""
