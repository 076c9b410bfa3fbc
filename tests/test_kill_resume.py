"""Killing `filter-pool score` at any moment and running it again gives the same tables."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.workspace import RunPaths
from tests.generators.synthetic import write_synthetic_pool

CLI = str(Path(sys.executable).parent / "filter-pool")


def _score_command(run: Path, checkpoint: Path) -> list[str]:
    return [CLI, "score", str(run), "--model", "fp-tiny-vit", "--pretrained", str(checkpoint),
            "--workers", "0", "--batch-size", "4", "--no-progress", "--save-embeddings"]


def _tables(run: Path) -> tuple[pl.DataFrame, np.ndarray]:
    paths = RunPaths(run)
    scores = pl.read_parquet(paths.scores_dir("dfn") / "part-*.parquet")
    parts = sorted(paths.embeddings_dir("dfn").glob("part-*.image.npy"))
    return scores, np.concatenate([np.load(p) for p in parts])


def _kill_when(command: list[str], ready, deadline_s: float = 120.0) -> None:
    """Start the command; SIGKILL it once ``ready()`` holds (or it ends on its own)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    while process.poll() is None and time.monotonic() - started < deadline_s:
        if ready():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=30)


def test_killed_runs_resume_to_the_uninterrupted_tables(tmp_path: Path,
                                                         tiny_checkpoint: Path) -> None:
    pool = write_synthetic_pool(tmp_path / "pool", num_shards=5, samples_per_shard=24,
                                image_size=96)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    for run in (reference, interrupted):
        ingest_pool(IngestConfig(pool=pool.root, run=run))
    subprocess.run(_score_command(reference, tiny_checkpoint), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    done_dir = RunPaths(interrupted).scores_dir("dfn") / "_done"
    scores_dir = RunPaths(interrupted).scores_dir("dfn")
    moments = [
        lambda: scores_dir.exists(),  # as soon as it starts writing
        lambda: len(list(done_dir.glob("*.json"))) >= 1,  # after a completion record
        lambda: any(scores_dir.glob(".*.tmp")) or len(list(done_dir.glob("*.json"))) >= 3,
    ]
    for ready in moments:
        _kill_when(_score_command(interrupted, tiny_checkpoint), ready)
    subprocess.run(_score_command(interrupted, tiny_checkpoint), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    expected_scores, expected_embeddings = _tables(reference)
    got_scores, got_embeddings = _tables(interrupted)
    assert got_scores.select("uid", "status", "error").equals(
        expected_scores.select("uid", "status", "error"))
    np.testing.assert_allclose(got_scores["dfn_score"].to_numpy(),
                               expected_scores["dfn_score"].to_numpy(), atol=1e-6)
    np.testing.assert_array_equal(got_embeddings, expected_embeddings)
    assert not list(scores_dir.rglob(".*.tmp"))
