"""WebDataset tar shards: layout and manifest, writer, reader, tar parser."""
