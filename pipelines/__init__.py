"""Data path: storage access, dataset formats, map-style datasets and iterable pipelines.

Read top-down: ``storage`` (where bytes live) → ``voc`` (what an annotation says) →
``samples`` (bytes to tensors) → ``random_access`` / ``sequential`` (the two access patterns)
→ ``loaders`` (DataLoader wiring).
"""
