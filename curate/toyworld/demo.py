"""The quick-start job: does a DFN pick a better training set than the baselines?

On a generated toy web world (``curate.toyworld.world``) the demo runs the whole product:
generate the world, serve its POOL on 127.0.0.1 and download it with img2dataset, ingest,
train a DFN on the clean HQ split and a "web CLIP" on the raw POOL, score the POOL with
both, sweep, select the subsets below, export the DFN subset as hand-off shards, and then
measure each subset the DataComp way: a fresh small CLIP per seed trained for the same
number of samples seen, zero-shot top-1 on the EVAL split.

Subsets: ``no_filter`` (every downloaded sample), ``random`` (same size as DFN 30%),
``basic`` (DataComp's basic filter, the size rule scaled to the toy images), ``web_clip_30``
(top 30% by the web CLIP), ``dfn_30`` and ``dfn_15``. Only this module reads the world's
hidden labels, to report each subset's precision; no filter or scorer sees them.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curate.errors import UserError
from curate.evaluate.stage import EvaluateConfig, evaluate_subset
from curate.executor import ExecutorConfig
from curate.export.stage import ExportConfig, export_subset
from curate.filters import parse_filter_spec
from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.workspace import SUBSET_MANIFEST, RunPaths, write_json_atomic
from curate.models import ModelSpec
from curate.score.stage import ScoreConfig, score_run
from curate.select.subset import SelectConfig, select_subset
from curate.select.sweep import SweepConfig, sweep
from curate.toyworld.download import download_toy_pool
from curate.toyworld.world import POOL_LABELS, ToyWorldConfig, write_toy_world
from curate.train import TrainConfig, train_clip
from curate.train.report import TRAIN_FILE

logger = logging.getLogger(__name__)

RESULTS_FILE = "demo_results.json"
FILTER_MODEL = "fp-tiny-cnn"  # a timm test_resnet tower: it learns the shapes (student_probe)
BASIC_MIN_SIDE = 64  # the toy world's clean images are 64-160 px; DataComp's rule says 200


@dataclass(frozen=True)
class DemoScale:
    """Sizes and training budgets of one demo scale."""

    world: str
    filter_samples: int
    student_samples: int
    seeds: tuple[int, ...]
    batch_size: int
    filter_batch_size: int


SCALES = {
    # CI: every artifact, tiny budgets (the comparison is not meaningful at this size)
    "small": DemoScale(
        "small",
        filter_samples=2_000,
        student_samples=640,
        seeds=(0, 1, 2),
        batch_size=64,
        filter_batch_size=64,
    ),
    # the README's main job: within 15 minutes on a 2-core CPU
    "full": DemoScale(
        "full",
        filter_samples=64_000,
        student_samples=32_000,
        seeds=(0, 1, 2),
        batch_size=64,
        filter_batch_size=64,
    ),
}


@dataclass(frozen=True)
class DemoConfig:
    """Where the demo writes and at which scale."""

    out: Path
    scale: str = "full"
    seed: int = 0
    workers: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        if self.scale not in SCALES:
            raise UserError(f"--scale must be one of {', '.join(SCALES)}, got '{self.scale}'")

    @property
    def settings(self) -> DemoScale:
        return SCALES[self.scale]


@dataclass
class DemoResult:
    """The comparison table and where everything is."""

    out: Path
    subsets: list[dict[str, Any]]
    filters: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    report: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "subsets": self.subsets,
            "filters": self.filters,
            "timings": self.timings,
            "report": str(self.report) if self.report else None,
        }

    def text(self) -> str:
        header = (f"{'subset':<12} {'size':>7} {'precision':>9} {'top-1 mean':>10} "
                  f"{'spread':>8}  per seed")
        lines = [header, "-" * len(header)]
        for s in self.subsets:
            seeds = " ".join(f"{v:.3f}" for v in s["top1"])
            lines.append(
                f"{s['name']:<12} {s['size']:>7} {s['precision']:>9.3f} "
                f"{s['top1_mean']:>10.4f} {s['top1_spread']:>8.4f}  {seeds}"
            )
        lines.append(f"results: {self.out / RESULTS_FILE}")
        if self.report:
            lines.append(f"report:  {self.report}")
        return "\n".join(lines)


class _Clock:
    """Wall seconds per demo stage."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(now - self._start, 1)
        logger.info("demo: %s took %.1f s", stage, now - self._start)
        self._start = now


def _train_filter(data: Path, out: Path, config: DemoConfig, eval_set: Path) -> dict[str, Any]:
    """Train (or reuse) a filter network; return its train.json record."""
    if (out / TRAIN_FILE).is_file():
        return json.loads((out / TRAIN_FILE).read_text())
    scale = config.settings
    result = train_clip(
        TrainConfig(
            data=data,
            out=out,
            model=FILTER_MODEL,
            samples=scale.filter_samples,
            batch_size=scale.filter_batch_size,
            lr=2e-3,
            eval_set=eval_set,
            decoded_cache=True,
            seed=config.seed,
            progress=config.progress,
        )
    )
    return result.record


def _subset_requests(run: Path, dfn30_size: int) -> dict[str, SelectConfig]:
    """The compared subsets (all but random depend only on filters and scores)."""
    ok = "status = 'success'"
    random_where = (
        f"sample_id IN (SELECT sample_id FROM samples WHERE {ok} "
        f"ORDER BY hash(uid || 'random-subset') LIMIT {dfn30_size})"
    )
    basic = parse_filter_spec(f"basic:min_side={BASIC_MIN_SIDE}")
    return {
        "no_filter": SelectConfig(run=run, name="no_filter", where=ok, overwrite=True),
        "random": SelectConfig(run=run, name="random", where=random_where, overwrite=True),
        "basic": SelectConfig(run=run, name="basic", filters=(basic,), where=ok, overwrite=True),
        "web_clip_30": SelectConfig(
            run=run, name="web_clip_30", by="web_clip", fraction=0.3, overwrite=True
        ),
        "dfn_30": SelectConfig(run=run, name="dfn_30", by="dfn", fraction=0.3, overwrite=True),
        "dfn_15": SelectConfig(run=run, name="dfn_15", by="dfn", fraction=0.15, overwrite=True),
    }


def _label_mix(run: Path, labels: Path, subset: str) -> dict[str, int]:
    """Hidden ground truth of a subset's samples: count per label (clean or noise kind)."""
    manifest = pl.read_parquet(RunPaths(run).subset_dir(subset) / SUBSET_MANIFEST, columns=["uid"])
    truth = pl.read_parquet(labels, columns=["uid", "label"])
    joined = manifest.join(truth, on="uid", how="left").with_columns(
        pl.col("label").fill_null("unlabelled")
    )
    return dict(joined.group_by("label").len().sort("label").iter_rows())


def _evaluate_all(
    config: DemoConfig, run: Path, eval_set: Path, names: list[str]
) -> dict[str, Any]:
    scale = config.settings
    results = {}
    for name in names:
        evaluation = evaluate_subset(
            EvaluateConfig(
                run=run,
                subset=name,
                eval_set=eval_set,
                samples_seen=scale.student_samples,
                seeds=scale.seeds,
                model=FILTER_MODEL,
                batch_size=scale.batch_size,
                lr=2e-3,
                decoded_cache=True,
                progress=config.progress,
            )
        )
        results[name] = evaluation
    return results


def run_demo(config: DemoConfig) -> DemoResult:
    """Run the whole flow (each stage reuses what an earlier run finished) and compare."""
    from curate.toyworld.demo_report import write_demo_report

    out, scale = config.out, config.settings
    clock = _Clock()
    world_dir, pool_dir, run = out / "world", out / "pool", out / "run"
    if not (world_dir / "world.json").is_file():
        write_toy_world(
            world_dir,
            ToyWorldConfig.for_scale(scale.world, seed=config.seed, workers=2),
            progress=config.progress,
        )
    clock.lap("generate world")
    if not any(pool_dir.glob("*.tar")):
        download_toy_pool(world_dir, pool_dir, processes=2, threads=8, overwrite=True)
    clock.lap("serve and download pool")
    ingest_pool(IngestConfig(pool=pool_dir, run=run))
    clock.lap("ingest")
    eval_set = world_dir / "eval"
    filters = {
        "dfn": _train_filter(world_dir / "hq", out / "filters" / "dfn", config, eval_set),
        "web_clip": _train_filter(pool_dir, out / "filters" / "web_clip", config, eval_set),
    }
    clock.lap("train filters")
    for name in filters:
        score_run(
            ScoreConfig(
                run=run,
                model=ModelSpec(str(out / "filters" / name)),
                name=name,
                executor=ExecutorConfig(workers=config.workers),
                progress=config.progress,
            )
        )
    clock.lap("score pool")
    sweep(SweepConfig(run=run, by="dfn", name="dfn", fractions=(0.1, 0.15, 0.2, 0.3, 0.5),
                      overwrite=True))
    dfn30 = select_subset(_subset_requests(run, 0)["dfn_30"])
    requests = _subset_requests(run, dfn30.kept)
    selected = {name: select_subset(request) for name, request in requests.items()}
    clock.lap("sweep and select")
    export_subset(
        ExportConfig(
            run=run,
            subset="dfn_30",
            out=out / "handoff_dfn_30",
            overwrite=True,
            progress=config.progress,
        )
    )
    clock.lap("export")
    evaluations = _evaluate_all(config, run, eval_set, list(requests))
    clock.lap("evaluate subsets")
    rows = []
    for name, summary in selected.items():
        mix = _label_mix(run, world_dir / POOL_LABELS, name)
        top1 = [r["zero_shot_top1"] for r in evaluations[name].runs]
        rows.append(
            {
                "name": name,
                "size": summary.kept,
                "precision": mix.get("clean", 0) / max(1, summary.kept),
                "label_mix": mix,
                "top1": top1,
                "top1_mean": statistics.fmean(top1),
                "top1_spread": max(top1) - min(top1),
                "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                "recall_i2t": [r["image_to_text_r1"] for r in evaluations[name].runs],
                "seeds": list(scale.seeds),
            }
        )
    filter_summary = {
        name: {
            "train_dir": str(out / "filters" / name),
            "metrics": record.get("final_metrics", {}),
            "samples_seen": record.get("samples_seen"),
        }
        for name, record in filters.items()
    }
    result = DemoResult(out, rows, filter_summary, clock.timings)
    payload = {
        "scale": config.scale,
        "settings": {
            "world": scale.world,
            "filter_model": FILTER_MODEL,
            "filter_samples": scale.filter_samples,
            "student_samples": scale.student_samples,
            "seeds": list(scale.seeds),
            "basic": f"basic:min_side={BASIC_MIN_SIDE}",
            "eval_set": str(eval_set),
        },
        **result.to_dict(),
    }
    write_json_atomic(out / RESULTS_FILE, payload)
    result.report = write_demo_report(out, payload)
    clock.lap("report")
    result.timings = clock.timings
    write_json_atomic(
        out / RESULTS_FILE, {**payload, "timings": clock.timings, "report": str(result.report)}
    )
    return result
