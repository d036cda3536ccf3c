"""Dataset formats: annotation files and folders read into records."""
