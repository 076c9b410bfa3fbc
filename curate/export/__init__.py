"""``filter-pool export``: a subset as webdataset hand-off shards."""
