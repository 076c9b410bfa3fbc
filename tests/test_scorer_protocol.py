"""A new scorer is one class plus its registration: a hash over raw image bytes, registered
here, runs through the score stage and the runner, and joins into ``samples`` row by row."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from curate.executor import ExecutorConfig
from curate.io.shards import TarReadResult, iter_tar_samples
from curate.io.workspace import RunPaths
from curate.score.registry import IMAGE_BYTES, list_scorers, register_scorer
from curate.score.stage import ScoreConfig, score_run
from curate.score.task import ShardInput, ShardRows
from curate.tables import connect


def byte_hash(data: bytes) -> float:
    return int.from_bytes(hashlib.sha256(data).digest()[:4], "big") / 2**32


class HashScorer:
    def score(self, shard: ShardInput, progress) -> ShardRows:
        rows = shard.rows()
        tar_result = TarReadResult()
        for sample in shard.readable(rows, tar_result):
            rows.store([sample.row], np.float32([byte_hash(sample.image)]))
            progress(1)
        rows.finish(tar_result)
        return rows


@register_scorer("test_bytehash")
class HashKind:
    reads = IMAGE_BYTES

    def describe(self, config: ScoreConfig) -> dict[str, Any]:
        return {"model": "sha256-of-image-bytes"}

    def load(self, config: ScoreConfig, slot: int) -> HashScorer:
        return HashScorer()


def test_a_registered_scorer_joins_into_samples(run_dir: Path) -> None:
    assert {"clip", "test_bytehash"} <= set(list_scorers())
    config = ScoreConfig(run=run_dir, kind="test_bytehash", name="hash",
                         executor=ExecutorConfig(workers=0), progress=False)
    summary = score_run(config)
    assert summary.failed_shards == {} and summary.samples_scored == 36
    scores_dir = RunPaths(run_dir).scores_dir("hash")
    assert json.loads((scores_dir / "_scorer.json").read_text())["kind"] == "test_bytehash"
    assert sorted(p.name for p in (scores_dir / "_done").iterdir()) == [
        f"part-{i:05d}.json" for i in range(3)]

    con = connect(run_dir)
    pool_rows = con.execute("SELECT count(*) FROM pool").fetchone()[0]
    rows = con.execute("SELECT uid, key, hash_score, hash_status FROM samples").fetchall()
    assert len(rows) == pool_rows == 36
    by_status = dict(con.execute(
        "SELECT hash_status, count(*) FROM samples GROUP BY 1").fetchall())
    assert by_status["ok"] == sum(1 for r in rows if r[2] is not None) > 20
    assert {"not_downloaded", "missing_image"} <= set(by_status)
    scored = [r for r in rows if r[3] == "ok"]
    assert all(0.0 <= r[2] < 1.0 for r in scored)
    assert len({r[2] for r in scored}) > len(scored) // 2  # real hashes, not a constant
    tar = Path(RunPaths(run_dir).read_run()["shards"][0]["tar"])
    direct = {sample.key: byte_hash(sample.image()[1])
              for sample in iter_tar_samples(tar, TarReadResult()) if sample.image()}
    got = {key: score for _, key, score, status in rows if status == "ok" and key in direct}
    assert got and all(abs(got[key] - direct[key]) < 1e-6 for key in got)
    # the stage and the runner resume it as any other scorer
    assert score_run(config).samples_scored == 0
