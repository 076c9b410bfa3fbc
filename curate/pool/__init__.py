"""Pools: reading input shards and building the run's pool table."""
