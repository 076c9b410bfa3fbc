"""``filter-pool compare``: which training set wins at scale? Fitted scaling curves per subset.

For each subset, budget (samples seen) and seed one proxy student is trained by
``filter-pool evaluate``'s library function (a finished evaluate run of the same settings is
reused, never retrained), and the saturating law of :mod:`curate.compare.fit` is fitted per
subset to zero-shot error against samples seen. With ``reinforced`` (one subset) the subset is
trained both plain and on its reinforced shards, and the learning-efficiency factor says how many
samples seen plain training needs to reach reinforced training's accuracy at each budget.

Output, written at once (a staged folder renamed into place): ``RUN/compare/NAME/`` with
``compare.json`` (settings, fitted parameters with bootstrap intervals, held-out error, R^2,
predicted top-1 at 10x the largest budget with its band, crossings, efficiency),
``compare.parquet`` (every point) and ``compare.png``. A finished comparison of the same
settings is reused; other settings are refused (``--overwrite`` replaces the comparison, never
the finished evaluate runs it reads).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.compare import COMPARE_DIR, COMPARE_JSON, COMPARE_PARQUET, COMPARE_PNG
from curate.compare.fit import (
    BOOTSTRAP_RESAMPLES,
    EXTRAPOLATE,
    MIN_BUDGETS,
    CurveFit,
    FitError,
    Points,
    crossings,
    efficiency,
    fit_curve,
)
from curate.compare.plot import plot_comparison
from curate.errors import UserError
from curate.evaluate.stage import DEFAULT_STUDENT, EVALUATION_FILE, EvaluateConfig, evaluate_subset
from curate.io.lock import run_output, writes
from curate.io.workspace import (
    RunPaths,
    check_name,
    check_replaceable,
    refuse_other_settings,
    staged_directory,
    write_json_atomic,
)
from curate.train.reinforced import DistillConfig
from curate.train.report import TRAIN_FILE

logger = logging.getLogger(__name__)



def compare_dir(run: Path, name: str) -> Path:
    """``RUN/compare/NAME``: ``name`` must be a name, not a path."""
    return Path(run) / COMPARE_DIR / check_name(name, "comparison")


@dataclass(frozen=True)
class CompareConfig:
    """Subsets x budgets x seeds of proxy training, one eval set, one student configuration."""

    run: Path
    subsets: tuple[str, ...]
    eval_set: Path
    budgets: tuple[int, ...]
    seeds: int = 3
    name: str | None = None
    model: str = DEFAULT_STUDENT
    batch_size: int = 64
    lr: float | None = None
    holdout: int | None = None
    workers: int | None = None
    device: str = "auto"
    reinforced: Path | None = None
    distill: DistillConfig | None = None
    decoded_cache: bool = False
    resamples: int = BOOTSTRAP_RESAMPLES
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        object.__setattr__(self, "eval_set", Path(self.eval_set))
        object.__setattr__(self, "subsets", tuple(self.subsets))
        object.__setattr__(self, "budgets", tuple(sorted(int(b) for b in self.budgets)))
        if not self.subsets:
            raise UserError("give at least one --subset")
        if len(set(self.subsets)) != len(self.subsets):
            raise UserError(f"--subset values repeat: {list(self.subsets)}")
        for subset in self.subsets:
            check_name(subset, "subset")
        if any(b < 1 for b in self.budgets):
            raise UserError(f"--budgets must be positive, got {list(self.budgets)}")
        if len(set(self.budgets)) != len(self.budgets):
            raise UserError(f"--budgets values repeat: {list(self.budgets)}")
        if len(self.budgets) < MIN_BUDGETS:
            raise UserError(
                f"--budgets: {len(self.budgets)} budgets are too few to fit err(C) = "
                f"a*(C+b)^-c + d; give at least {MIN_BUDGETS} (all but the largest are fitted, "
                "the largest checks the fit; 5 or more fit all four parameters)")
        if self.seeds < 1:
            raise UserError(f"--seeds must be at least 1, got {self.seeds}")
        if self.resamples < 0:
            raise UserError(f"resamples must be >= 0, got {self.resamples}")
        if self.reinforced is not None:
            object.__setattr__(self, "reinforced", Path(self.reinforced))
            object.__setattr__(self, "distill", self.distill or DistillConfig())
            if len(self.subsets) != 1:
                raise UserError("--reinforced compares reinforced against plain training of "
                                f"one subset; got {len(self.subsets)} (--subset once)")
            if self.decoded_cache:
                raise UserError("--decoded-cache does not apply to --reinforced data (plain and "
                                "reinforced students must see the same augmentations)")
        elif self.distill is not None:
            raise UserError("distillation options need --reinforced DIR")
        if self.name is None:
            name = "_vs_".join(self.subsets) + ("_reinforced" if self.reinforced else "")
            object.__setattr__(self, "name", name)
        check_name(self.name, "comparison")

    @property
    def target(self) -> Path:
        return compare_dir(self.run, self.name)

    def legs(self) -> list[tuple[str, str, bool]]:
        """(curve label, subset, reinforced) of each curve."""
        if self.reinforced is not None:
            subset = self.subsets[0]
            return [(subset, subset, False), (f"{subset} (reinforced)", subset, True)]
        return [(subset, subset, False) for subset in self.subsets]

    def evaluate_config(self, subset: str, budget: int, reinforced: bool) -> EvaluateConfig:
        return EvaluateConfig(
            run=self.run, subset=subset, eval_set=self.eval_set, samples_seen=budget,
            seeds=tuple(range(self.seeds)), model=self.model, batch_size=self.batch_size,
            lr=self.lr, holdout=self.holdout, workers=self.workers, device=self.device,
            progress=self.progress, reinforced=self.reinforced if reinforced else None,
            distill=self.distill if reinforced else None, decoded_cache=self.decoded_cache,
        )

    def settings(self) -> dict[str, Any]:
        return {
            "subsets": list(self.subsets),
            "eval_set": str(self.eval_set.resolve()),
            "budgets": list(self.budgets),
            "seeds": self.seeds,
            "model": self.model,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "holdout": self.holdout,
            "reinforced": (None if self.reinforced is None or self.distill is None else
                           {"path": str(self.reinforced.resolve()), **self.distill.to_dict()}),
            "decoded_cache": self.decoded_cache,
            "resamples": self.resamples,
        }


@dataclass
class CompareResult:
    """A comparison: what compare.json holds, plus what this call trained and reused."""

    path: Path
    record: dict[str, Any]
    trained: int = 0
    reused_runs: int = 0
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**self.record, "path": str(self.path), "trained": self.trained,
                "reused_runs": self.reused_runs, "reused": self.reused}

    def text(self) -> str:
        head = (f"comparison '{self.record['name']}' -> {self.path} "
                + ("(finished earlier with the same settings, reused)" if self.reused else
                   f"({self.trained} students trained, {self.reused_runs} finished ones reused)"))
        return "\n".join([head, *summary_lines(self.record)])


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The printed table: per curve the held-out check, R^2 and predicted top-1 at 10x the
    largest budget with its band; then crossings and the efficiency factor."""
    largest = max(record["settings"]["budgets"])
    header = ("curve", f"top-1 @{largest:,}", "held-out err", "R^2",
              f"top-1 @{int(EXTRAPOLATE * largest):,} [95% band]")
    rows = [header]
    for curve in record["curves"]:
        at10 = curve["predicted_at_10x"]
        held = curve["held_out"]
        rows.append((curve["label"], f"{held['observed_top1']:.4f}", f"{held['abs_error']:.4f}",
                     f"{curve['r2']:.3f}",
                     f"{at10['top1']:.4f} [{at10['band'][0]:.4f}, {at10['band'][1]:.4f}]"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    low, high = min(record["settings"]["budgets"]), EXTRAPOLATE * largest
    if len(record["curves"]) > 1:
        if not record["crossings"]:
            lines.append(f"  no two curves cross in [{low:,}, {int(high):,}] samples seen")
        for cross in record["crossings"]:
            first, second = cross["curves"]
            lines.append(f"  {first} and {second} cross at {cross['budget']:,.0f} samples seen "
                         f"(top-1 {cross['top1']:.4f}); {cross['leads_after']} leads after")
    if record.get("efficiency"):
        lines.append("  learning efficiency of reinforced training (plain samples needed / "
                     "budget):")
        for row in record["efficiency"]:
            if row["factor"] is None:
                lines.append(f"    {row['budget']:,}: reinforced top-1 {row['reinforced_top1']:.4f}"
                             " is beyond plain training's fitted ceiling")
                continue
            band = row["factor_interval"]
            seeds = ", ".join("-" if f is None else f"{f:.2f}" for f in row["factor_per_seed"])
            lines.append(f"    {row['budget']:,}: {row['factor']:.2f}x"
                         + (f" [{band[0]:.2f}, {band[1]:.2f}]" if band else "")
                         + f" (per seed {seeds})")
    return lines


def _train(config: CompareConfig) -> tuple[list[dict[str, Any]], int, int]:
    """Every (curve, budget, seed) point, through evaluate (finished runs reused); the rows and
    how many students were trained and reused."""
    rows: list[dict[str, Any]] = []
    trained = reused = 0
    for label, subset, reinforced in config.legs():
        for budget in config.budgets:
            evaluate = config.evaluate_config(subset, budget, reinforced)
            done = {seed: (evaluate.subset_dir / "evaluate" / evaluate.tag(seed)
                           / TRAIN_FILE).is_file() for seed in evaluate.seeds}
            evaluation = evaluate_subset(evaluate)
            for run in evaluation.runs:
                if done[run["seed"]]:
                    reused += 1
                else:
                    trained += 1
                top1 = run.get("zero_shot_top1")
                rows.append({
                    "curve": label, "subset": subset, "reinforced": reinforced,
                    "budget": budget, "seed": run["seed"],
                    "top1": float("nan") if top1 is None else float(top1),
                    "samples_seen": run.get("samples_seen"), "train_dir": run["train_dir"],
                    "evaluation": str(evaluate.subset_dir / EVALUATION_FILE),
                    "held_out": budget == max(config.budgets),
                })
            logger.info("compare %s: %s at %d samples seen done", config.name, label, budget)
    return rows, trained, reused


def _points(rows: list[dict[str, Any]], label: str) -> Points:
    top1: dict[int, list[float]] = {}
    for row in rows:
        if row["curve"] == label:
            top1.setdefault(row["budget"], []).append(row["top1"])
    return Points(top1)


def _table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table({
        "curve": pa.array([r["curve"] for r in rows], pa.string()),
        "subset": pa.array([r["subset"] for r in rows], pa.string()),
        "reinforced": pa.array([r["reinforced"] for r in rows], pa.bool_()),
        "budget": pa.array([r["budget"] for r in rows], pa.int64()),
        "seed": pa.array([r["seed"] for r in rows], pa.int64()),
        "top1": pa.array([r["top1"] for r in rows], pa.float64()),
        "samples_seen": pa.array([r["samples_seen"] for r in rows], pa.int64()),
        "held_out": pa.array([r["held_out"] for r in rows], pa.bool_()),
        "train_dir": pa.array([r["train_dir"] for r in rows], pa.string()),
        "evaluation": pa.array([r["evaluation"] for r in rows], pa.string()),
    })


def _finished(config: CompareConfig) -> CompareResult:
    record_file = config.target / COMPARE_JSON
    if not record_file.is_file():
        raise UserError(f"{config.target} exists but holds no {COMPARE_JSON}; pass --overwrite "
                        "or another --name")
    record = json.loads(record_file.read_text())
    refuse_other_settings(f"comparison {config.target}", record.get("settings", {}),
                          config.settings(), "pass --overwrite or another --name")
    logger.info("comparison %s: made with the same settings, reused", config.name)
    return CompareResult(config.target, record, reused=True)


@writes(lambda c: run_output(c.run, f"compare-{c.name}", f"comparison '{c.name}'"))
def compare_subsets(config: CompareConfig) -> CompareResult:
    """Train (or reuse) every point, fit a curve per subset, write ``RUN/compare/NAME/``."""
    RunPaths(config.run).read_run()
    if config.target.exists() and not config.overwrite:
        return _finished(config)
    check_replaceable(config.target, (COMPARE_JSON,), "compare", "--name")
    rows, trained, reused = _train(config)
    curves: list[tuple[CurveFit, Points]] = []
    for label, _, _ in config.legs():
        points = _points(rows, label)
        curves.append((fit_curve(label, points, config.resamples), points))
    fits = [fit for fit, _ in curves]
    low, high = min(config.budgets), EXTRAPOLATE * max(config.budgets)
    record: dict[str, Any] = {
        "name": config.name,
        "settings": config.settings(),
        "law": "err(C) = a * (C + b)^(-c) + d, C = samples seen, err = 1 - zero-shot top-1",
        "curves": [fit.to_dict() for fit in fits],
        "crossings": crossings(fits, low, high),
        "efficiency": None,
        "points": len(rows),
    }
    if config.reinforced is not None:
        plain, reinforced = curves
        record["efficiency"] = efficiency(plain[0], reinforced[1])
    with staged_directory(config.target) as staging:
        pq.write_table(_table(rows), staging / COMPARE_PARQUET)
        plot_comparison(staging / COMPARE_PNG, curves)
        write_json_atomic(staging / COMPARE_JSON, record)
    return CompareResult(config.target, record, trained, reused)


__all__ = ["CompareConfig", "CompareResult", "FitError", "compare_subsets", "compare_dir"]
