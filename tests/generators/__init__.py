"""Test-only generators of pools, DataComp metadata and shape sets (also used by benchmarks)."""
