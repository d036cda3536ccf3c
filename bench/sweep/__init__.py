"""`make sweep`: how many simulated accelerators a storage keeps busy, and what ran out there.

MLPerf Storage v3.0's question. Reading order: run (the sweep), search, points, limits, rules,
workloads, sizing and launch (how many ranks), dataset, report.
"""
