"""compare.png: each training set's points with seed spread, its fitted curve and the
extrapolation to 10x the largest budget with its bootstrap band (matplotlib, Agg, no pyplot)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from curate.compare.fit import EXTRAPOLATE, CurveFit, Points


def plot_comparison(path: Path, curves: Sequence[tuple[CurveFit, Points]]) -> None:
    """Write the figure to ``path`` (PNG)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5))
    axis = figure.add_subplot()
    colors = [f"C{i}" for i in range(10)]
    for i, (fit, points) in enumerate(curves):
        color = colors[i % len(colors)]
        budgets = np.array(points.budgets, dtype=np.float64)
        means = np.array([points.mean(b) for b in points.budgets])
        low = np.array([min(points.top1[b]) for b in points.budgets])
        high = np.array([max(points.top1[b]) for b in points.budgets])
        xs, ys = points.arrays(points.budgets)
        axis.scatter(xs, ys, s=10, color=color, alpha=0.35)
        axis.errorbar(budgets[:-1], means[:-1], yerr=[means[:-1] - low[:-1],
                      high[:-1] - means[:-1]], fmt="o", color=color, capsize=3)
        axis.errorbar(budgets[-1:], means[-1:], yerr=[means[-1:] - low[-1:],
                      high[-1:] - means[-1:]], fmt="D", mfc="white", color=color, capsize=3)
        seen = np.geomspace(budgets[0], budgets[-1], 120)
        ahead = np.geomspace(budgets[-1], EXTRAPOLATE * budgets[-1], 60)
        axis.plot(seen, fit.top1(seen), color=color, label=f"{fit.label} (R² {fit.r2:.2f})")
        axis.plot(ahead, fit.top1(ahead), color=color, linestyle="--")
        everywhere = np.concatenate([seen, ahead[1:]])
        band_low, band_high = fit.top1_band(everywhere)
        axis.fill_between(everywhere, band_low, band_high, color=color, alpha=0.15, linewidth=0)
    axis.set_xscale("log")
    axis.set_xlabel("samples seen")
    axis.set_ylabel("zero-shot top-1")
    axis.set_title("fitted 1 - (a (C + b)^-c + d); dashed: extrapolation, ◇: held-out budget")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
