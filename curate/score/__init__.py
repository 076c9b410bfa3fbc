"""Scoring: filter-network cosine similarity for every sample of a run's pool."""
