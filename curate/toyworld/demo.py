"""The quick-start job: does a DFN pick a better training set than the baselines?

On a generated toy web world (``curate.toyworld.world``) the demo runs the whole product:
generate the world, serve its POOL on 127.0.0.1 and download it with img2dataset, ingest,
train a DFN on the clean HQ split and a "web CLIP" on the raw POOL, score the POOL with
both, sweep, select the subsets below, export the DFN subset as hand-off shards, and then
measure each subset the DataComp way: a fresh small CLIP per seed trained for the same
number of samples seen, zero-shot top-1 on the EVAL split. A scaling comparison (``filter-pool
compare``) then trains no filter, web CLIP 30% and DFN 30% at smaller budgets too and fits a
curve per subset, and the demo's claims (:mod:`curate.toyworld.claims`) are checked against
the numbers.

Subsets: ``no_filter`` (every downloaded sample), ``random`` (same size as DFN 30%),
``basic`` (DataComp's basic filter, the size rule scaled to the toy images), ``web_clip_30``
(top 30% by the web CLIP), ``dfn_30`` and ``dfn_15``. Only this module reads the world's
hidden labels, to report each subset's precision; no filter or scorer sees them.

The flow is the recipe ``pipelines/demo.toml`` (``filter-pool run pipelines/demo.toml`` runs
it too); ``run_demo`` sets its variables from the scale and reads back the comparison.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curate.compare import COMPARE_JSON, COMPARE_PARQUET, COMPARE_PNG
from curate.compare.stage import compare_dir
from curate.errors import UserError
from curate.evaluate.stage import EvaluateConfig, evaluate_subset
from curate.io.workspace import SUBSET_MANIFEST, SUBSET_RECORD, RunPaths, write_json_atomic
from curate.toyworld.claims import demo_claims
from curate.toyworld.world import POOL_LABELS
from curate.train.report import TRAIN_FILE

logger = logging.getLogger(__name__)

RESULTS_FILE = "demo_results.json"
COMPARE_PLOT = "demo_compare.png"
DEMO_RECIPE = Path(__file__).resolve().parents[2] / "pipelines" / "demo.toml"
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
    compare_budgets: tuple[int, ...]  # the scaling comparison's budgets (the largest: students')


SCALES = {
    # CI: every artifact, tiny budgets (the comparison is not meaningful at this size)
    "small": DemoScale(
        "small",
        filter_samples=24_000,  # enough for DFN-30 to be cleaner than random (tested)
        student_samples=640,
        seeds=(0, 1, 2),
        batch_size=64,
        filter_batch_size=64,
        compare_budgets=(160, 320, 480, 640),
    ),
    # the README's main job. fp-tiny-cnn on the HQ split: zero-shot 0.18 after 64k samples,
    # 0.71 after 256k; students stay near chance below ~16k samples seen, so the comparison's
    # budgets start at 24k (measured 2026-12-04, README "Quick start")
    "full": DemoScale(
        "full",
        filter_samples=256_000,
        student_samples=64_000,
        seeds=(0, 1, 2),
        batch_size=64,
        filter_batch_size=64,
        compare_budgets=(24_000, 32_000, 48_000, 64_000),
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
    comparison: dict[str, Any] | None = None
    claims: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "subsets": self.subsets,
            "filters": self.filters,
            "comparison": self.comparison,
            "claims": self.claims,
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
        if self.comparison:
            lines.append(f"scaling comparison ({self.comparison['path']}), mean top-1 per "
                         "samples seen:")
            for label, means in self.comparison["means"].items():
                points = "  ".join(f"{int(b):,}: {v:.4f}" for b, v in means.items())
                lines.append(f"  {label:<12} {points}")
        for claim in self.claims:
            mark = "holds" if claim["holds"] else "DOES NOT HOLD"
            lines.append(f"claim: {claim['claim']}: {mark} ({claim['detail']})")
        lines.append(f"results: {self.out / RESULTS_FILE}")
        if self.report:
            lines.append(f"report:  {self.report}")
        return "\n".join(lines)


def _label_mix(run: Path, labels: Path, subset: str) -> dict[str, int]:
    """Hidden ground truth of a subset's samples: count per label (clean or noise kind)."""
    manifest = pl.read_parquet(RunPaths(run).subset_dir(subset) / SUBSET_MANIFEST, columns=["uid"])
    truth = pl.read_parquet(labels, columns=["uid", "label"])
    joined = manifest.join(truth, on="uid", how="left").with_columns(
        pl.col("label").fill_null("unlabelled")
    )
    return dict(joined.group_by("label").len().sort("label").iter_rows())


def write_demo_results(
    out: Path, run: Path, world: Path, subsets: list[str], filters: list[str], eval_set: Path,
    *, scale: str, model: str, filter_samples: int, samples_seen: int, seeds: tuple[int, ...],
    batch_size: int, lr: float | None, decoded_cache: bool, basic: str,
    timings: dict[str, float] | None = None, comparison: str | None = None,
) -> DemoResult:
    """The comparison table (the demo recipe's last stage): each subset's size, precision
    against the world's hidden labels and its evaluation (the evaluate stages' finished seeds,
    reused), the scaling comparison ``comparison`` when given and the demo's claims checked;
    writes ``demo_results.json`` and ``demo_report.md``."""
    from curate.toyworld.demo_report import write_demo_report

    rows = []
    for name in subsets:
        selection = json.loads((RunPaths(run).subset_dir(name) / SUBSET_RECORD).read_text())
        evaluation = evaluate_subset(EvaluateConfig(
            run=run, subset=name, eval_set=eval_set, samples_seen=samples_seen, seeds=seeds,
            model=model, batch_size=batch_size, lr=lr, decoded_cache=decoded_cache,
            progress=False,
        ))
        mix = _label_mix(run, world / POOL_LABELS, name)
        top1 = [r["zero_shot_top1"] for r in evaluation.runs]
        kept = selection["kept"]
        rows.append({
            "name": name,
            "size": kept,
            "precision": mix.get("clean", 0) / max(1, kept),
            "label_mix": mix,
            "top1": top1,
            "top1_mean": statistics.fmean(top1),
            "top1_spread": max(top1) - min(top1),
            "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
            "recall_i2t": [r["image_to_text_r1"] for r in evaluation.runs],
            "seeds": list(seeds),
        })
    filter_summary = {}
    for name in filters:
        train_dir = out / "filters" / name
        record = json.loads((train_dir / TRAIN_FILE).read_text())
        filter_summary[name] = {"train_dir": str(train_dir),
                                "metrics": record.get("final_metrics", {}),
                                "samples_seen": record.get("samples_seen")}
    result = DemoResult(out, rows, filter_summary, dict(timings or {}))
    if comparison:
        result.comparison = _comparison_summary(out, run, comparison)
    result.claims = demo_claims({"subsets": rows, "filters": filter_summary,
                                 "comparison": result.comparison})
    payload = {
        "scale": scale,
        "settings": {
            "world": SCALES[scale].world if scale in SCALES else scale,
            "filter_model": model,
            "filter_samples": filter_samples,
            "student_samples": samples_seen,
            "seeds": list(seeds),
            "basic": basic,
            "eval_set": str(eval_set),
        },
        **result.to_dict(),
    }
    write_json_atomic(out / RESULTS_FILE, payload)
    result.report = write_demo_report(out, payload)
    write_json_atomic(out / RESULTS_FILE, {**payload, "report": str(result.report)})
    return result


def _comparison_summary(out: Path, run: Path, name: str) -> dict[str, Any]:
    """The demo's scaling comparison (``RUN/compare/NAME``): mean top-1 per curve and budget,
    each curve's fit check, and its plot copied beside the report as ``demo_compare.png``."""
    folder = compare_dir(run, name)
    if not (folder / COMPARE_JSON).is_file():
        raise UserError(f"demo report: the comparison {folder} has no {COMPARE_JSON}; run the "
                        "recipe's compare stage first")
    record = json.loads((folder / COMPARE_JSON).read_text())
    points = pl.read_parquet(folder / COMPARE_PARQUET, columns=["curve", "budget", "top1"])
    means: dict[str, dict[str, float]] = {}
    for curve in record["settings"]["subsets"]:
        per_budget = (points.filter(pl.col("curve") == curve).group_by("budget")
                      .agg(pl.col("top1").mean()).sort("budget"))
        means[curve] = {str(b): float(v) for b, v in per_budget.iter_rows()}
    shutil.copyfile(folder / COMPARE_PNG, out / COMPARE_PLOT)
    return {
        "name": name,
        "path": str(folder),
        "budgets": record["settings"]["budgets"],
        "seeds": record["settings"]["seeds"],
        "means": means,
        "curves": [{"label": c["label"], "r2": c["r2"],
                    "held_out_abs_error": c["held_out"]["abs_error"],
                    "predicted_at_10x": c["predicted_at_10x"]} for c in record["curves"]],
        "crossings": record["crossings"],
        "plot": COMPARE_PLOT,
    }


def demo_variables(config: DemoConfig) -> dict[str, Any]:
    """The demo recipe's variables for ``config`` (its scale's sizes and budgets)."""
    scale = config.settings
    return {
        "out": str(config.out),
        "world_scale": scale.world,
        "scale": config.scale,
        "seed": config.seed,
        "workers": config.workers,
        "filter_model": FILTER_MODEL,
        "filter_samples": scale.filter_samples,
        "filter_batch_size": scale.filter_batch_size,
        "student_samples": scale.student_samples,
        "seeds": list(scale.seeds),
        "batch_size": scale.batch_size,
        "basic_min_side": BASIC_MIN_SIDE,
        "compare_budgets": list(scale.compare_budgets),
    }


def run_demo(config: DemoConfig) -> DemoResult:
    """Run the demo recipe (``pipelines/demo.toml``: each stage reuses what an earlier run
    finished) and return its comparison, with the seconds each stage took this time."""
    import curate.toyworld.stages  # noqa: F401  (registers toyworld, download, the demo's kinds)
    from curate.pipeline import run_recipe

    result = run_recipe(DEMO_RECIPE, demo_variables(config), progress=config.progress,
                        on_stage=lambda s: logger.info("demo: %s", s.line()))
    if not result.ok:
        failed = next(s for s in result.stages if s.status == "failed")
        raise UserError(f"demo stage {failed.id} failed: {failed.error}")
    timings = {s.id: s.seconds for s in result.stages}
    summary = result.stages[-1].summary or {}
    results_file = config.out / RESULTS_FILE
    payload = json.loads(results_file.read_text())
    payload["timings"] = timings
    write_json_atomic(results_file, payload)
    from curate.toyworld.demo_report import write_demo_report

    report = write_demo_report(config.out, payload)
    return DemoResult(config.out, summary.get("subsets", payload["subsets"]),
                      payload["filters"], timings, report, payload.get("comparison"),
                      payload.get("claims", []))
