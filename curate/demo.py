"""The quick-start job: generate a small web-like pool, ingest it and score it.

Until train-dfn exists, the filter network is the packaged ``fp-tiny-vit`` config at random
weights (named ``tiny_random`` so no one mistakes its scores for a trained filter's). The job
shows the whole pool-to-score-table path: img2dataset layout, Dask scoring, statuses for the
planted bad samples, resumable Parquet outputs, and a DuckDB query over them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from curate.errors import UserError
from curate.executor import ExecutorConfig
from curate.models import ModelSpec
from curate.pool.ingest import IngestConfig, IngestSummary, ingest_pool
from curate.pool.synthetic import write_synthetic_pool
from curate.scoring.stage import ScoreConfig, ScoreSummary, score_run
from curate.workspace import RunPaths

logger = logging.getLogger(__name__)

SAMPLES_PER_SHARD = 200
DEMO_SCORER = "tiny_random"


@dataclass(frozen=True)
class DemoConfig:
    """Where the demo writes, and how big a pool it generates."""

    out: Path
    samples: int = 600
    workers: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        if self.samples < 8:
            raise UserError(f"--samples must be at least 8, got {self.samples}")


@dataclass
class DemoResult:
    """What the demo produced."""

    pool: Path
    run: Path
    ingest: IngestSummary
    score: ScoreSummary
    top: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pool": str(self.pool),
            "run": str(self.run),
            "ingest": self.ingest.to_dict(),
            "score": self.score.to_dict(),
            "top": self.top,
        }

    def text(self) -> str:
        lines = [
            f"pool: {self.pool} ({self.ingest.samples} samples, {self.ingest.shards} shards)",
            f"run:  {self.run}",
            f"score '{self.score.name}': ok {self.score.stats.ok}, failed "
            f"{self.score.stats.failed} "
            + str(dict(sorted(self.score.stats.by_status.items()))),
            f"  {self.score.samples_per_second:.1f} samples/s",
            "highest scores (random-weight filter until train-dfn lands):",
        ]
        lines += [f"  {row['score']:+.4f}  {row['text']}" for row in self.top]
        return "\n".join(lines)


def _top_samples(run: Path, limit: int = 5) -> list[dict[str, Any]]:
    paths = RunPaths(run)
    query = f"""
        SELECT p.uid, p.text, s.{DEMO_SCORER}_score AS score
        FROM read_parquet(?) p JOIN read_parquet(?) s USING (uid)
        WHERE s.status = 'ok' ORDER BY score DESC LIMIT {int(limit)}
    """
    pool_glob = str(paths.pool_dir / "part-*.parquet")
    score_glob = str(paths.scores_dir(DEMO_SCORER) / "part-*.parquet")
    rows = duckdb.connect().execute(query, [pool_glob, score_glob]).fetchall()
    return [{"uid": uid, "text": text, "score": float(score)} for uid, text, score in rows]


def run_demo(config: DemoConfig) -> DemoResult:
    """Generate (or reuse) the pool, ingest it, score it, and report."""
    pool_dir = config.out / "pool"
    run_dir = config.out / "run"
    num_shards = max(1, math.ceil(config.samples / SAMPLES_PER_SHARD))
    if not any(pool_dir.glob("*.tar")):
        write_synthetic_pool(
            pool_dir,
            num_shards=num_shards,
            samples_per_shard=math.ceil(config.samples / num_shards),
            image_size=256,
            seed=config.seed,
        )
    ingested = ingest_pool(IngestConfig(pool=pool_dir, run=run_dir))
    scored = score_run(
        ScoreConfig(
            run=run_dir,
            model=ModelSpec("fp-tiny-vit", random_init=True),
            name=DEMO_SCORER,
            executor=ExecutorConfig(workers=config.workers),
            save_embeddings=True,
        )
    )
    return DemoResult(pool_dir, run_dir, ingested, scored, _top_samples(run_dir))
