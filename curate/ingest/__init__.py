"""``filter-pool ingest``: a pool (img2dataset shards or DataComp metadata) into a run's
pool table."""
