"""The summary a sharded stage returns: totals, what ran now, failures; text and JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class StageSummary:
    """Totals over every finished shard (``stats``), those run now (``now``), and failures."""

    stats: Any
    now: Any
    wall_seconds: float
    shards_total: int
    shards_skipped: int
    task_failures: dict[str, str]

    @property
    def failed_shards(self) -> dict[str, str]:
        """Shards whose records name a failure, and shards whose task raised on every try."""
        return {**self.stats.failed_shards, **self.task_failures}

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.stats.to_dict(),
            "failed_shards": self.failed_shards,
            "wall_seconds": round(self.wall_seconds, 3),
            "shards_total": self.shards_total,
            "shards_skipped": self.shards_skipped,
        }

    def failure_lines(self) -> list[str]:
        return [f"  FAILED shard {shard}: {reason}"
                for shard, reason in sorted(self.failed_shards.items())]

    def text(self) -> str:
        """One line per fact, for people."""
        return "\n".join([
            f"{self.stats.samples} samples in {self.shards_total} shards "
            f"({self.shards_skipped} already done), {self.now.samples} now in "
            f"{self.wall_seconds:.1f} s",
            *self.failure_lines(),
        ])
