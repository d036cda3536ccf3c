"""`make bench`: each access pattern against the raw storage baseline and peer libraries.

Passes are interleaved and repeated. Reading order: run (the matrix), case (one configuration),
baselines, peers, diagnosis, report.
"""
