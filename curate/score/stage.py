"""The score stage: plan the unfinished shards of a run, score them on an executor, summarise.

The scorer is a registered kind (``curate.score.registry``; ``clip`` by default) and the
runner (``curate.runner``) plans, skips, executes and records the shards.
Outputs (DESIGN.md): ``RUN/scores/<name>/part-NNNNN.parquet`` (uid, ``<name>_score``,
status, error), optionally ``RUN/embeddings/<name>/part-NNNNN.{image,text}.npy`` (float16,
row-aligned with the score part), and per shard a completion record
``RUN/scores/<name>/_done/part-NNNNN.json`` written last. ``_scorer.json`` records the model.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from curate.errors import UserError
from curate.executor import (
    ExecutorConfig,
    auto_workers,
    current_worker_slot,
    load_once,
    start_workers_early,
)
from curate.io.image import DEFAULT_MAX_PIXELS
from curate.io.lock import run_output, writes
from curate.io.storage import changed_since_ingest, looks_like_url, restored_url
from curate.io.workspace import (
    SCORER_FILE,
    SCORER_NAME,
    RunPaths,
    part_name,
    remove_stale_temporaries,
    write_json_atomic,
)
from curate.models import ModelSpec, weight_bytes
from curate.runner import Shard, ShardedStage, ShardStats, StageSummary, run_sharded
from curate.score.image_loader import DECODERS
from curate.score.registry import EMBEDDINGS, READS_TARS, ProgressFn, ScorerKind, get_scorer_kind
from curate.score.scorer import PRECISIONS
from curate.score.task import ShardTask, score_task

logger = logging.getLogger(__name__)

NAME_PATTERN = SCORER_NAME  # becomes SQL columns: <name>_score, ...
DEVICES = ("auto", "cpu", "cuda")


class ScoreError(UserError):
    """A score request that cannot start; nothing has been written."""


@dataclass(frozen=True)
class ScoreConfig:
    """One score stage: which run, which scorer kind and model, under which name, on which
    engine."""

    run: Path
    model: ModelSpec | None = None
    name: str = "dfn"
    kind: str = "clip"  # a registered scorer kind (curate.score.registry)
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
    head: Path | str | None = None  # the head kind's head file (curate.heads), or its URL
    embeddings: str | None = None  # saved embeddings a kind reads (RUN/embeddings/NAME)

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        if self.head is not None:
            object.__setattr__(self, "head", restored_url(self.head)
                               if looks_like_url(self.head) else Path(self.head))
            if self.kind != "head":
                raise ScoreError(f"--head is for --kind head, not --kind {self.kind}")
        if self.embeddings is not None and self.kind == "clip":
            raise ScoreError("--embeddings is for scorer kinds that read saved embeddings "
                             "(--kind head), not --kind clip")
        if self.embeddings is not None and not NAME_PATTERN.match(self.embeddings):
            raise ScoreError(f"--embeddings '{self.embeddings}': an embeddings name (lower-case "
                             "letters, digits and '_')")
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
class ScoreSummary(StageSummary):
    """What a score stage did: totals over the shards it ran and the ones already done."""

    name: str = ""

    @property
    def samples_scored(self) -> int:
        """Samples scored by this invocation."""
        return self.now.samples

    @property
    def samples_per_second(self) -> float:
        """Samples scored by this invocation per second of its wall time."""
        return self.samples_scored / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **super().to_dict(),
            "samples_scored": self.samples_scored,
            "samples_per_second": round(self.samples_per_second, 2),
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
        return "\n".join(lines + self.failure_lines())


def run_score_task(kind: ScorerKind, config: ScoreConfig, task: ShardTask,
                   progress: ProgressFn) -> ShardStats:
    """The per-shard task an executor runs: the worker's cached scorer, then score_task."""
    slot = current_worker_slot()
    scorer = load_once(("score-kind", config.kind, config, slot), lambda: kind.load(config, slot))
    return score_task(task, scorer, progress)


def _scorer_record(kind: ScorerKind, config: ScoreConfig) -> dict[str, Any]:
    try:
        described = kind.describe(config)
    except ScoreError:
        raise
    except UserError as exc:
        raise ScoreError(str(exc)) from exc
    return {"name": config.name, "kind": config.kind, **described}


def _check_previous_scorer(paths: RunPaths, config: ScoreConfig, record: dict) -> None:
    scores_dir = paths.scores_dir(config.name)
    previous_file = scores_dir / SCORER_FILE
    if not previous_file.is_file():
        return
    previous = json.loads(previous_file.read_text())
    made_with = (previous.get("model"), previous.get("precision", "auto"))
    asked = (record.get("model"), record.get("precision", "auto"))
    weights = (previous.get("weights"), record.get("weights"))
    if config.overwrite or (made_with == asked and (None in weights or len(set(weights)) == 1)):
        return
    if made_with == asked:  # a model on a URL written again: its files' ETags changed
        raise ScoreError(
            f"score name '{config.name}' was made with the weights {weights[0]}, now "
            f"{weights[1]}; pick another --name or pass --overwrite")
    raise ScoreError(
        f"score name '{config.name}' was made with {made_with[0]} at precision {made_with[1]}, "
        f"not {asked[0]} at {asked[1]}; pick another --name or pass --overwrite"
    )


def _clear_scorer_outputs(paths: RunPaths, name: str) -> None:
    for directory in (paths.scores_dir(name), paths.embeddings_dir(name)):
        if directory.exists():
            shutil.rmtree(directory)


def score_stage(config: ScoreConfig, shards: list[dict], reads_embeddings: str | None = None
                ) -> ShardedStage:
    """The score stage as the runner runs it: every shard of the run (the runner skips the
    finished ones by their records), the kind's per-shard task, ShardStats.
    ``reads_embeddings``: the saved embeddings a kind reads, inputs of each shard like its
    pool part (a worker that shares no disk with the client fetches them)."""
    paths = RunPaths(config.run)
    storage_options = paths.pool_storage_options()
    scores_dir = paths.scores_dir(config.name)
    planned = []
    for shard in shards:
        part = part_name(shard["index"])
        embeddings = paths.embeddings_dir(config.name) / part if config.save_embeddings else None
        task = ShardTask(
            scorer=config.name,
            shard_name=shard["name"],
            tar=shard.get("tar"),
            pool_part=str(paths.pool_part(shard["index"])),
            scores_part=str(scores_dir / f"{part}.parquet"),
            embeddings_prefix=str(embeddings) if embeddings else None,
            batch_size=config.batch_size,
            max_image_pixels=config.max_image_pixels,
            storage_options=storage_options,
        )
        written = [task.scores_part] + ([f"{embeddings}.{kind}.npy" for kind in
                                          ("image", "text")] if embeddings else [])
        saved = [] if reads_embeddings is None else [
            str(path) for kind in ("image", "text") if (
                path := paths.embeddings_dir(reads_embeddings) / f"{part}.{kind}.npy").is_file()]
        planned.append(Shard(name=shard["name"], part=part, task=task, outputs=tuple(written),
                             inputs=(task.pool_part, *saved)))
    return ShardedStage(
        name=f"score {config.name}",
        shards=tuple(planned),
        task_fn=functools.partial(run_score_task, get_scorer_kind(config.kind), config),
        stats_type=ShardStats,
        output_dir=scores_dir,
        progress_total=_pool_rows,
    )


def _pool_rows(tasks: list[ShardTask]) -> int:
    return sum(pq.ParquetFile(task.pool_part).metadata.num_rows for task in tasks)


@writes(lambda c: run_output(c.run, f"score-{c.name}", f"scorer '{c.name}'"))
def score_run(config: ScoreConfig) -> ScoreSummary:
    """Score every unfinished shard of ``config.run``; return the summary of the whole table."""
    started = time.perf_counter()
    kind = get_scorer_kind(config.kind)
    executor_config = _executor_config(config)
    start_workers_early(executor_config)  # overlaps the checks below
    paths = RunPaths(config.run)
    run = paths.read_run()
    imageless = [s["name"] for s in run["shards"] if not s.get("tar")]
    if imageless and kind.reads in READS_TARS:
        raise ScoreError(
            f"run {paths.root} has no image shards for {imageless[0]} (ingested from "
            f"{run['source']['kind']} metadata); score needs img2dataset webdataset shards"
        )
    if kind.reads in READS_TARS and (changed := changed_since_ingest(
            run["shards"], paths.pool_storage_options())):
        raise ScoreError(changed)
    record = _scorer_record(kind, config)
    _check_previous_scorer(paths, config, record)
    if config.overwrite:
        _clear_scorer_outputs(paths, config.name)
    remove_stale_temporaries(paths.embeddings_dir(config.name))
    scores_dir = paths.scores_dir(config.name)
    stage = score_stage(config, run["shards"],
                        record.get("embeddings") if kind.reads == EMBEDDINGS else None)
    done = run_sharded(stage, executor_config, progress=config.progress,
                       before_run=lambda: write_json_atomic(scores_dir / SCORER_FILE, record))
    return ScoreSummary(**{**vars(done), "wall_seconds": time.perf_counter() - started},
                        name=config.name)


def _executor_config(config: ScoreConfig) -> ExecutorConfig:
    """The executor asked for; without ``--workers``, several workers per GPU scoring on CUDA
    (``auto_workers``)."""
    executor = config.executor
    if executor.workers is not None or executor.scheduler is not None:
        return executor
    on_gpu = config.device != "cpu" and torch.cuda.is_available()
    gpus = torch.cuda.device_count() if on_gpu else 0
    if not gpus:
        return replace(executor, workers=auto_workers())
    memory = min(torch.cuda.get_device_properties(i).total_memory for i in range(gpus))
    weights = weight_bytes(config.model) or 0
    return replace(executor, workers=auto_workers(gpus, memory, weights))
