"""`make checkpoint-bench`: how fast a storage takes and gives back a training job's checkpoint."""
