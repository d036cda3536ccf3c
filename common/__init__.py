"""One copy of the mechanisms every layer uses: atomic writes, one-line error quotes."""
