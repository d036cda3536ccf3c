"""A real S3-protocol server on this machine (``rclone serve s3`` on 127.0.0.1), for
development, tests and the benchmarks' local runs: started, filled, found and stopped here."""
