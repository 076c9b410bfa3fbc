"""The reinforce stage: plan the unfinished shards of an export, reinforce them on an executor.

Output (DataCompDR layout): ``OUT/config.json`` (augmentation, teachers and their dims, the
captioner and its sampling, the dtype), ``OUT/<shard>.tar`` per input shard, and per shard a
completion record ``OUT/_done/<shard>.json`` written last by the runner (``curate.runner``).
A rerun with the same configuration skips finished shards; a different configuration needs
``overwrite``.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch

import curate
from curate.errors import UserError
from curate.executor import (
    ExecutorConfig,
    current_task_threads,
    current_worker_slot,
    load_once,
)
from curate.io.lock import beside, hold, writes
from curate.io.shards import find_shards
from curate.io.workspace import (
    check_apart,
    check_replaceable,
    setting_differences,
    write_json_atomic,
)
from curate.models import ModelError, ModelSpec
from curate.reinforce import records as rec
from curate.reinforce.augment import AugmentConfig
from curate.reinforce.captioner import Captioner, SamplingConfig
from curate.reinforce.shard import ReinforceModels, ReinforceTask, reinforce_shard
from curate.reinforce.teachers import Teacher, TeacherEnsemble
from curate.runner import Shard, ShardedStage, StageSummary, run_sharded
from curate.score.scorer import resolve_device

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
FORMAT = "filter-pool-reinforced/1"
DEVICES = ("auto", "cpu", "cuda")


class ReinforceError(UserError):
    """A reinforce request that cannot start; nothing has been written."""


@dataclass(frozen=True)
class ReinforceConfig:
    """One reinforce stage: which shards, which teachers and captioner, how many views."""

    shards: Path
    out: Path
    teachers: tuple[ModelSpec, ...]
    augmentations: int
    captioner: ModelSpec | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    image_size: int | None = None  # augmentation resolution; default: the largest teacher's
    bf16: bool = False
    seed: int = 0
    batch_size: int = 16
    device: str = "auto"
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "shards", Path(self.shards))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "teachers", tuple(self.teachers))
        if not self.teachers:
            raise ReinforceError("--teachers names no model")
        ids = [t.id for t in self.teachers]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ReinforceError(f"--teachers lists {duplicates[0]} more than once")
        if self.augmentations < 1:
            raise ReinforceError(f"--augmentations must be at least 1, got {self.augmentations}")
        if self.batch_size < 1:
            raise ReinforceError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.device not in DEVICES:
            raise ReinforceError(f"--device must be one of {', '.join(DEVICES)}")
        if self.image_size is not None and self.image_size < 1:
            raise ReinforceError(f"--image-size must be positive, got {self.image_size}")
        check_apart(self.out, [self.shards])  # is, holds or lies in its shards: refused


@dataclass(frozen=True)
class EngineConfig:
    """What a worker loads once: teachers, captioner, device, batch size."""

    teachers: tuple[ModelSpec, ...]
    captioner: ModelSpec | None
    sampling: SamplingConfig
    device: str
    batch_size: int


def get_models(config: EngineConfig, slot: int = 0) -> ReinforceModels:
    """The process's teachers and captioner for ``config``, loaded on first use and kept."""

    def load() -> ReinforceModels:
        threads = current_task_threads()
        if threads:
            torch.set_num_threads(threads)
        device = resolve_device(config.device, slot)
        ensemble = TeacherEnsemble.load(config.teachers, device, config.batch_size)
        captioner = (
            Captioner.load(config.captioner, config.sampling, device)
            if config.captioner is not None
            else None
        )
        logger.info("reinforce models ready on %s", device)
        return ReinforceModels(ensemble, captioner)

    return load_once(("reinforce", config, slot), load)


def run_reinforce_task(engine: EngineConfig, task: ReinforceTask, progress) -> rec.ReinforceStats:
    """The per-shard task an executor runs: the worker's cached models, then the shard."""
    return reinforce_shard(task, get_models(engine, slot=current_worker_slot()), progress)


@dataclass
class ReinforceSummary(StageSummary):
    """What a reinforce stage did, over the shards it ran and those already done."""

    out: Path = Path()

    @property
    def written_now(self) -> int:
        """Samples written by this invocation."""
        return self.now.written

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            **super().to_dict(),
            "written_now": self.written_now,
            "samples_per_second": round(self.written_now / self.wall_seconds, 2)
            if self.wall_seconds > 0
            else 0.0,
        }

    def text(self) -> str:
        stats = self.stats
        lines = [
            f"reinforced {stats.written} of {stats.samples} samples in {self.shards_total} "
            f"shards ({self.shards_skipped} already done) -> {self.out}",
            f"  {self.written_now} written now in {self.wall_seconds:.1f} s",
        ]
        lines += [f"  dropped {reason}: {count}" for reason, count in sorted(stats.dropped.items())]
        return "\n".join(lines + self.failure_lines())


def _describe_models(config: ReinforceConfig) -> tuple[list[dict], dict | None]:
    """Load each model once here (CPU, strictly) to check it and record its dims, image size and
    normalisation before any worker starts or any output is written."""
    teachers = []
    for spec in config.teachers:
        teacher = Teacher.load(spec, "cpu")
        teachers.append(teacher.describe())
        del teacher
    captioner = None
    if config.captioner is not None:
        captioner = Captioner.load(config.captioner, config.sampling, "cpu").describe()
    return teachers, captioner


def build_record(config: ReinforceConfig) -> tuple[dict[str, Any], AugmentConfig]:
    """config.json's content, and the augmentation config it fixes."""
    try:
        teachers, captioner = _describe_models(config)
    except ModelError as exc:
        raise ReinforceError(str(exc)) from exc
    size = config.image_size or max(max(t["image_size"]) for t in teachers)
    augment = AugmentConfig(image_size=size, seed=config.seed)
    record = {
        "format": FORMAT,
        "augmentation": {**augment.to_dict(), "num_augmentations": config.augmentations},
        "teachers": teachers,
        "embed_dims": [t["embed_dim"] for t in teachers],
        "captioner": captioner,
        "sampling": config.sampling.to_dict() if captioner else None,
        "num_gt_captions": 1,
        "dtype": "bfloat16" if config.bf16 else "float32",
        "embedding_file": rec.embedding_extension(config.bf16),
        "seed": config.seed,
        "versions": {
            "filter_pool": curate.__version__,
            "open_clip": open_clip.__version__,
            "torch": torch.__version__.split("+")[0],
        },
    }
    return record, augment


def _prepare_out(config: ReinforceConfig, record: dict[str, Any]) -> None:
    out = config.out
    config_file = out / CONFIG_FILE
    if out.exists() and not out.is_dir():
        raise ReinforceError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if config.overwrite:
            check_replaceable(out, (CONFIG_FILE,), "reinforce")
            shutil.rmtree(out)
        elif not config_file.is_file():
            raise ReinforceError(
                f"--out {out} exists and is not a reinforce output; pass --overwrite to replace it"
            )
        else:
            previous = json.loads(config_file.read_text())
            differences = setting_differences(previous, record)
            if differences:
                raise ReinforceError(
                    f"{config_file} was made with another configuration ("
                    + "; ".join(differences) + "); pass --overwrite to redo it"
                )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(config_file, record)


def reinforce_stage(config: ReinforceConfig, augment: AugmentConfig) -> ShardedStage:
    """The reinforce stage as the runner runs it: one shard per input tar; a shard counts as
    finished when its record and its output tar are there."""
    shards = []
    for shard in find_shards(config.shards):
        out_tar = config.out / shard.tar.name
        task = ReinforceTask(
            shard_name=shard.name,
            tar=str(shard.tar),
            out_tar=str(out_tar),
            augmentations=config.augmentations,
            augment=augment,
            bf16=config.bf16,
            batch_size=config.batch_size,
            seed=config.seed,
        )
        shards.append(Shard(name=shard.name, part=shard.tar.stem, task=task,
                            outputs=(str(out_tar),), inputs=(str(shard.tar),)))
    engine = EngineConfig(
        teachers=config.teachers,
        captioner=config.captioner,
        sampling=config.sampling,
        device=config.device,
        batch_size=max(64, config.batch_size * config.augmentations),
    )
    return ShardedStage(
        name="reinforce",
        shards=tuple(shards),
        task_fn=functools.partial(run_reinforce_task, engine),
        stats_type=rec.ReinforceStats,
        output_dir=config.out,
        progress_total=_count_samples,
    )


@writes(lambda config: hold(beside(config.out), f"reinforce output {config.out}"))
def reinforce(config: ReinforceConfig) -> ReinforceSummary:
    """Reinforce every unfinished shard of ``config.shards`` into ``config.out``."""
    started = time.perf_counter()
    find_shards(config.shards)  # a clear error before any model is loaded
    record, augment = build_record(config)
    _prepare_out(config, record)
    done = run_sharded(reinforce_stage(config, augment), config.executor,
                       progress=config.progress)
    return ReinforceSummary(**{**vars(done), "wall_seconds": time.perf_counter() - started},
                            out=config.out)


def _count_samples(tasks: list[ReinforceTask]) -> int | None:
    """Input sample count from export's manifest.jsonl, when it is there."""
    manifest = Path(tasks[0].tar).parent / "manifest.jsonl"
    if not manifest.is_file():
        return None
    counts = {}
    for line in manifest.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            counts[str(entry.get("shard"))] = int(entry.get("num_uids", 0))
    return sum(counts.get(task.shard_name, 0) for task in tasks) or None
