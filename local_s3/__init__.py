"""A local S3-protocol server (``rclone serve s3``) for development, tests and local benchmarks."""
