"""Tools that make data (not on the data path): synthetic datasets, cell crops."""
