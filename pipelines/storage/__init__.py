"""Storage back ends: the one interface through which every byte of the dataset is read."""
