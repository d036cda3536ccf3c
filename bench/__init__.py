"""`make bench`: compare access patterns against raw storage baselines and peer libraries."""
