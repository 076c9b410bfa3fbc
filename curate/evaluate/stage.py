"""``filter-pool evaluate``: is this subset better? Train a fresh small CLIP on it, measure.

As DataComp does, every subset gets the same training budget in samples seen, whatever its
size (a small subset is seen for more epochs), and the student is scored by zero-shot top-1
on a fixed eval set plus retrieval recall@1 on pairs held out from the subset. Each seed is
one ``train_clip`` run under ``RUN/subsets/NAME/evaluate/<tag>/`` (resumable; a finished
run is reused), and ``RUN/subsets/NAME/evaluation.json`` collects the results.

With ``reinforced`` (a ``filter-pool reinforce`` output of the subset's export) the students
train on the reinforced shards with MobileCLIP's distillation loss instead; their runs sit
beside the plain ones (``<tag>`` gains ``-dr<digest of the options>``) and their entry in
evaluation.json names the reinforced directory and options (``"reinforced": null`` for plain).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from curate.errors import UserError
from curate.io.lock import run_output, writes
from curate.io.workspace import SUBSET_MANIFEST, RunPaths, write_json_atomic
from curate.train import TrainConfig, train_clip
from curate.train.reinforced import DistillConfig, ReinforcedSource
from curate.train.report import TRAIN_FILE

logger = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"
DEFAULT_STUDENT = "fp-tiny-cnn"
METRICS = ("zero_shot_top1", "image_to_text_r1", "text_to_image_r1")
FINAL_VALIDATION_ONLY = 10**9  # a student is measured once, after its budget is spent


@dataclass(frozen=True)
class EvaluateConfig:
    """One subset, one eval set, a fixed budget of samples seen, one or more seeds."""

    run: Path
    subset: str
    eval_set: Path
    samples_seen: int = 20_000
    seeds: tuple[int, ...] = (0,)
    model: str = DEFAULT_STUDENT
    batch_size: int = 64
    lr: float | None = None
    holdout: int | None = None
    workers: int | None = None
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True
    reinforced: Path | None = None
    distill: DistillConfig | None = None
    decoded_cache: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        object.__setattr__(self, "eval_set", Path(self.eval_set))
        if self.reinforced is not None:
            object.__setattr__(self, "reinforced", Path(self.reinforced))
            object.__setattr__(self, "distill", self.distill or DistillConfig())
        elif self.distill is not None:
            raise UserError("--clip-weight, --distill-weight, --teacher-logit-scale and "
                            "--synthetic-captions need --reinforced DIR")
        if self.reinforced is not None and self.decoded_cache:
            raise UserError("--decoded-cache does not apply to --reinforced data")
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if self.samples_seen < 1:
            raise UserError(f"--samples-seen must be positive, got {self.samples_seen}")
        if not self.seeds:
            raise UserError("give at least one --seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"--seed values repeat: {list(self.seeds)}")

    @property
    def subset_dir(self) -> Path:
        return RunPaths(self.run).subset_dir(self.subset)

    def tag(self, seed: int) -> str:
        """The folder of one seed's training run: student, data path, budget, lr and seed."""
        model = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model)
        reinforced = self.reinforced_settings()
        if reinforced is not None:
            digest = hashlib.sha256(json.dumps(reinforced, sort_keys=True).encode()).hexdigest()
            model = f"{model}-dr{digest[:8]}"
        if self.decoded_cache:
            model = f"{model}-dc"
        lr = f"-lr{self.lr:g}" if self.lr is not None else ""
        return f"{model}-n{self.samples_seen}-b{self.batch_size}{lr}-seed{seed}"

    def reinforced_settings(self) -> dict[str, Any] | None:
        if self.reinforced is None or self.distill is None:
            return None
        return {"path": str(self.reinforced.resolve()), **self.distill.to_dict()}

    def settings(self) -> dict[str, Any]:
        return {
            "eval_set": str(self.eval_set.resolve()),
            "model": self.model,
            "samples_seen": self.samples_seen,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "reinforced": self.reinforced_settings(),
            "decoded_cache": self.decoded_cache,
        }


@dataclass
class Evaluation:
    """Per-seed metrics of one subset and their mean and spread."""

    subset: str
    settings: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Mean, sample standard deviation, min and max of each metric over the seeds."""
        out: dict[str, Any] = {}
        for metric in METRICS:
            values = [r[metric] for r in self.runs if r.get(metric) is not None]
            if not values:
                continue
            out[metric] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values),
                "max": max(values),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "subset": self.subset,
            **self.settings,
            "runs": self.runs,
            "summary": self.summary(),
        }

    def text(self) -> str:
        lines = [f"subset {self.subset}: {self.settings['model']} trained on "
                 f"{self.settings['samples_seen']} samples seen per seed"]
        reinforced = self.settings.get("reinforced")
        if reinforced:
            lines[0] += (f", distilled from {reinforced['path']} (clip weight "
                         f"{reinforced['clip_weight']:g}, distill weight "
                         f"{reinforced['distill_weight']:g})")
        for run in self.runs:
            lines.append(f"  seed {run['seed']}: zero-shot top-1 {run['zero_shot_top1']:.4f}, "
                         f"recall@1 i->t {run['image_to_text_r1']:.4f} t->i "
                         f"{run['text_to_image_r1']:.4f} ({run['subset_pairs']} pairs, "
                         f"{run['epochs_seen']:.1f} epochs)")
        top1 = self.summary().get("zero_shot_top1")
        if top1:
            lines.append(f"  zero-shot top-1 mean {top1['mean']:.4f} (std {top1['std']:.4f}, "
                         f"min {top1['min']:.4f}, max {top1['max']:.4f})")
        return "\n".join(lines)


def _seed_result(record: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    metrics = record.get("final_metrics", {})
    return {
        "seed": seed,
        "train_dir": str(out),
        "subset_pairs": record.get("data", {}).get("pairs"),
        "samples_seen": record.get("samples_seen"),
        "epochs_seen": record.get("epochs_seen"),
        "steps": record.get("steps"),
        "loss_last": metrics.get("loss_last"),
        **{metric: metrics.get(metric) for metric in METRICS},
        "zero_shot_chance": metrics.get("zero_shot_chance"),
        "seconds": record.get("run", {}).get("wall_seconds"),
    }


def _train_one(config: EvaluateConfig, seed: int) -> dict[str, Any]:
    out = config.subset_dir / "evaluate" / config.tag(seed)
    finished = out / TRAIN_FILE
    if finished.is_file() and not config.overwrite:
        logger.info("reusing the finished evaluation run %s", out)
        return _seed_result(json.loads(finished.read_text()), seed, out)
    result = train_clip(
        TrainConfig(
            data=config.run,
            subset=config.subset,
            out=out,
            model=config.model,
            samples=config.samples_seen,
            batch_size=config.batch_size,
            lr=config.lr,
            holdout=config.holdout,
            eval_set=config.eval_set,
            val_every=FINAL_VALIDATION_ONLY,
            workers=config.workers,
            device=config.device,
            seed=seed,
            overwrite=config.overwrite,
            progress=config.progress,
            reinforced=config.reinforced,
            distill=config.distill,
            decoded_cache=config.decoded_cache,
        )
    )
    return _seed_result(result.record, seed, out)


def _check_reinforced(config: EvaluateConfig, reinforced: Path) -> None:
    """The reinforced directory is sound and holds only samples of the subset (by uid)."""
    source = ReinforcedSource(reinforced)
    manifest = config.subset_dir / SUBSET_MANIFEST
    try:
        subset_uids = set(pq.read_table(manifest, columns=["uid"]).column("uid").to_pylist())
    except Exception as exc:  # pyarrow raises several kinds for bad files
        raise UserError(f"{manifest}: cannot read the uid column ({exc})") from exc
    uids = source.index().keys
    outside = sum(uids[i] not in subset_uids for i in range(len(uids)))
    if outside:
        raise UserError(
            f"--reinforced {reinforced}: {outside} of {len(uids)} samples are not in subset "
            f"'{config.subset}' (reinforce this subset's export: filter-pool export, then "
            "filter-pool reinforce)"
        )


def _store(path: Path, evaluation: Evaluation) -> None:
    """Add (or replace) this evaluation's entry, keyed by its settings, in evaluation.json."""
    entries = json.loads(path.read_text()).get("evaluations", []) if path.is_file() else []
    entries = [
        e for e in entries if {k: e.get(k) for k in evaluation.settings} != evaluation.settings
    ]
    entries.append(evaluation.to_dict())
    write_json_atomic(path, {"evaluations": entries})


@writes(lambda c: run_output(c.run, f"evaluate-{c.subset}", f"evaluation of subset '{c.subset}'"))
def evaluate_subset(config: EvaluateConfig) -> Evaluation:
    """Train one student per seed on the subset and collect their metrics."""
    if not (config.subset_dir / SUBSET_MANIFEST).is_file():
        raise UserError(
            f"subset '{config.subset}' not found: {config.subset_dir} has no "
            "manifest.parquet (make it with `filter-pool select`, without --uids-only)"
        )
    if config.reinforced is not None:
        _check_reinforced(config, config.reinforced)
    evaluation = Evaluation(config.subset, config.settings())
    for seed in config.seeds:
        evaluation.runs.append(_train_one(config, seed))
        logger.info("evaluate %s seed %d: %s", config.subset, seed, evaluation.runs[-1])
    _store(config.subset_dir / EVALUATION_FILE, evaluation)
    return evaluation
