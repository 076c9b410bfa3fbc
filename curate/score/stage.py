"""The score stage: plan the unfinished shards of a run, score them on an executor, summarise.

Outputs (DESIGN.md): ``RUN/scores/<name>/part-NNNNN.parquet`` (uid, ``<name>_score``,
status, error), optionally ``RUN/embeddings/<name>/part-NNNNN.{image,text}.npy`` (float16,
row-aligned with the score part), and per shard a completion record
``RUN/scores/<name>/_done/part-NNNNN.json`` written last. ``_scorer.json`` records the model.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from curate.errors import UserError
from curate.executor import (
    ExecutorConfig,
    TaskFailure,
    auto_workers,
    current_worker_slot,
    make_executor,
    start_workers_early,
)
from curate.io.image import DEFAULT_MAX_PIXELS
from curate.io.workspace import (
    DONE_DIR,
    SCORER_FILE,
    RunPaths,
    part_name,
    remove_stale_temporaries,
    write_json_atomic,
)
from curate.models import ModelError, ModelSpec
from curate.models.spec import check_weights, resolve_model_spec
from curate.runner.stats import ShardStats
from curate.score.image_loader import DECODERS
from curate.score.scorer import PRECISIONS, ScorerConfig, get_scorer
from curate.score.shard import ProgressFn, ShardTask, read_done_record, score_shard

logger = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
DEVICES = ("auto", "cpu", "cuda")


class ScoreError(UserError):
    """A score request that cannot start; nothing has been written."""


@dataclass(frozen=True)
class ScoreConfig:
    """One score stage: which run, which model, under which name, on which engine."""

    run: Path
    model: ModelSpec
    name: str = "dfn"
    batch_size: int = 64
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    device: str = "auto"
    save_embeddings: bool = False
    overwrite: bool = False
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    precision: str = "auto"
    plain_encoders: bool = False
    decoder: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        if not NAME_PATTERN.match(self.name):
            raise ScoreError(f"--name '{self.name}': use lower-case letters, digits and '_'")
        if self.batch_size < 1:
            raise ScoreError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.device not in DEVICES:
            raise ScoreError(f"--device must be one of {', '.join(DEVICES)}, got '{self.device}'")
        if self.max_image_pixels < 1:
            raise ScoreError("--max-image-pixels must be positive")
        if self.precision not in PRECISIONS:
            raise ScoreError(
                f"--precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'"
            )
        if self.decoder not in DECODERS:
            raise ScoreError(f"--decode must be one of {', '.join(DECODERS)}, got '{self.decoder}'")
        if self.decoder == "cuda" and self.device == "cpu":
            raise ScoreError("--decode cuda needs --device cuda (or auto on a GPU machine)")
        if self.precision == "fp16" and self.device == "cpu":
            raise ScoreError("--precision fp16 needs CUDA; on CPU use bf16 (lossy) or fp32")


@dataclass
class ScoreSummary:
    """What a score stage did: totals over the shards it ran and the ones already done."""

    name: str
    stats: ShardStats
    samples_scored: int
    wall_seconds: float
    shards_total: int
    shards_skipped: int
    task_failures: dict[str, str]

    @property
    def failed_shards(self) -> dict[str, str]:
        return {**self.stats.failed_shards, **self.task_failures}

    @property
    def samples_per_second(self) -> float:
        """Samples scored by this invocation per second of its wall time."""
        return self.samples_scored / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **self.stats.to_dict(),
            "failed_shards": self.failed_shards,
            "samples_scored": self.samples_scored,
            "wall_seconds": round(self.wall_seconds, 3),
            "samples_per_second": round(self.samples_per_second, 2),
            "shards_total": self.shards_total,
            "shards_skipped": self.shards_skipped,
        }

    def text(self) -> str:
        stats = self.stats
        lines = [
            f"scored '{self.name}': {stats.samples} samples in {self.shards_total} shards "
            f"({self.shards_skipped} already done)",
            f"  {self.samples_scored} scored now in {self.wall_seconds:.1f} s "
            f"({self.samples_per_second:.1f} samples/s)",
            f"  ok {stats.ok}, failed {stats.failed}",
        ]
        lines += [f"    {status}: {count}" for status, count in sorted(stats.by_status.items())
                  if status != "ok"]
        if stats.unlisted_samples:
            lines.append(f"  {stats.unlisted_samples} tar samples not in the pool table were "
                         "ignored")
        for shard, reason in sorted(self.failed_shards.items()):
            lines.append(f"  FAILED shard {shard}: {reason}")
        return "\n".join(lines)


def run_score_task(
    scorer_config: ScorerConfig, task: ShardTask, progress: ProgressFn
) -> ShardStats:
    """The per-shard task an executor runs: the worker's cached scorer, then score_shard."""
    scorer = get_scorer(scorer_config, slot=current_worker_slot())
    return score_shard(task, scorer, progress)


def _scorer_record(config: ScoreConfig) -> dict[str, Any]:
    resolved = resolve_model_spec(config.model)
    check_weights(config.model)
    return {
        "name": config.name,
        "model": config.model.id,
        "model_name": config.model.model,
        "pretrained": config.model.pretrained,
        "random_init": config.model.random_init,
        "weights": resolved.weights,
        "quick_gelu": resolved.quick_gelu,
        "precision": config.precision,
    }


def _check_previous_scorer(paths: RunPaths, config: ScoreConfig, record: dict) -> None:
    scores_dir = paths.scores_dir(config.name)
    previous_file = scores_dir / SCORER_FILE
    if not previous_file.is_file():
        return
    previous = json.loads(previous_file.read_text())
    made_with = (previous.get("model"), previous.get("precision", "auto"))
    if made_with == (record["model"], record["precision"]) or config.overwrite:
        return
    raise ScoreError(
        f"score name '{config.name}' was made with {made_with[0]} at precision {made_with[1]}, "
        f"not {record['model']} at {record['precision']}; pick another --name or pass --overwrite"
    )


def _clear_scorer_outputs(paths: RunPaths, name: str) -> None:
    for directory in (paths.scores_dir(name), paths.embeddings_dir(name)):
        if directory.exists():
            shutil.rmtree(directory)


def _plan_tasks(
    paths: RunPaths, config: ScoreConfig, shards: list[dict]
) -> tuple[list[ShardTask], ShardStats]:
    """Tasks for the shards not finished yet, and the stats of those already done."""
    scores_dir = paths.scores_dir(config.name)
    done_stats = ShardStats()
    tasks = []
    for shard in shards:
        part = part_name(shard["index"])
        done_record = scores_dir / DONE_DIR / f"{part}.json"
        finished = read_done_record(done_record)
        if finished is not None and not finished.failed_shards:
            done_stats = done_stats + finished
            continue
        embeddings = paths.embeddings_dir(config.name) / part if config.save_embeddings else None
        tasks.append(
            ShardTask(
                scorer=config.name,
                shard_name=shard["name"],
                tar=shard["tar"],
                pool_part=str(paths.pool_part(shard["index"])),
                scores_part=str(scores_dir / f"{part}.parquet"),
                done_record=str(done_record),
                embeddings_prefix=str(embeddings) if embeddings else None,
                batch_size=config.batch_size,
                max_image_pixels=config.max_image_pixels,
            )
        )
    return tasks, done_stats


def _pool_rows(tasks: list[ShardTask]) -> int:
    return sum(pq.ParquetFile(task.pool_part).metadata.num_rows for task in tasks)


def score_run(config: ScoreConfig) -> ScoreSummary:
    """Score every unfinished shard of ``config.run``; return the summary of the whole table."""
    started = time.perf_counter()
    executor_config = _executor_config(config)
    start_workers_early(executor_config)  # overlaps the checks below
    paths = RunPaths(config.run)
    run = paths.read_run()
    imageless = [s["name"] for s in run["shards"] if not s.get("tar")]
    if imageless:
        raise ScoreError(
            f"run {paths.root} has no image shards for {imageless[0]} (ingested from "
            f"{run['source']['kind']} metadata); score needs img2dataset webdataset shards"
        )
    try:
        record = _scorer_record(config)
    except ModelError as exc:
        raise ScoreError(str(exc)) from exc
    _check_previous_scorer(paths, config, record)
    if config.overwrite:
        _clear_scorer_outputs(paths, config.name)
    scores_dir = paths.scores_dir(config.name)
    for directory in (scores_dir, scores_dir / DONE_DIR, paths.embeddings_dir(config.name)):
        remove_stale_temporaries(directory)
    tasks, done_stats = _plan_tasks(paths, config, run["shards"])
    shards_total = len(run["shards"])
    scored_now = ShardStats()
    failures: dict[str, str] = {}
    if tasks:
        write_json_atomic(scores_dir / SCORER_FILE, record)
        scored_now, failures = _execute(config, executor_config, tasks)
    logger.info(
        "scored %s: %d shards run, %d already done",
        config.name,
        len(tasks),
        shards_total - len(tasks),
    )
    return ScoreSummary(
        name=config.name,
        stats=done_stats + scored_now,
        samples_scored=scored_now.samples,
        wall_seconds=time.perf_counter() - started,
        shards_total=shards_total,
        shards_skipped=shards_total - len(tasks),
        task_failures=failures,
    )


def _executor_config(config: ScoreConfig) -> ExecutorConfig:
    """The executor asked for; without ``--workers``, one worker per GPU scoring on CUDA."""
    executor = config.executor
    if executor.workers is not None or executor.scheduler is not None:
        return executor
    on_gpu = config.device != "cpu" and torch.cuda.is_available()
    gpus = torch.cuda.device_count() if on_gpu else 0
    return replace(executor, workers=auto_workers(gpus))


def _execute(config: ScoreConfig, executor_config: ExecutorConfig,
             tasks: list[ShardTask]) -> tuple[ShardStats, dict[str, str]]:
    executor = make_executor(executor_config)
    scorer_config = ScorerConfig(
        spec=config.model,
        device=config.device,
        threads=executor.threads_per_task,
        precision=config.precision,
        exact_shortcuts=not config.plain_encoders,
        decoder=config.decoder,
    )
    task_fn = functools.partial(run_score_task, scorer_config)
    stats = ShardStats()
    failures: dict[str, str] = {}
    bar = tqdm(
        total=_pool_rows(tasks),
        unit="sample",
        desc=f"score {config.name}",
        disable=not config.progress,
        dynamic_ncols=True,
    )
    try:
        for task, outcome in executor.map(task_fn, tasks, bar.update):
            if isinstance(outcome, TaskFailure):
                failures[task.shard_name] = outcome.error
                logger.error("shard %s failed: %s", task.shard_name, outcome.error)
            else:
                stats = stats + outcome
    finally:
        bar.close()
        executor.close()
    return stats, failures
