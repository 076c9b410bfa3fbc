"""SQL over a run: the DuckDB view (``samples``), chunked reads, score bins, query output."""

from curate.tables.views import connect, run_query, score_names

__all__ = ["connect", "run_query", "score_names"]
