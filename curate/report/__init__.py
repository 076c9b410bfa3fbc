"""A self-contained HTML report of a run: summaries, score plots and image grids."""

from curate.report.build import ReportConfig, ReportSummary, build_report

__all__ = ["ReportConfig", "ReportSummary", "build_report"]
