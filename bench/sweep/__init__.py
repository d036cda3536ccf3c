"""`make sweep`: MLPerf Storage v3.0's question, how many simulated accelerators a storage keeps
busy, and what ran out there. Reading order: run (the sweep), search, points, limits, rules,
workloads, sizing and launch (how many ranks), dataset, report."""
