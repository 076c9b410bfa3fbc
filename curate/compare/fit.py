"""The scaling law of one training set: zero-shot error against samples seen, fitted and checked.

The form is the saturating power law of the scaling-law comparison paper (arXiv 2506.04598)::

    err(C) = a * (C + b) ** (-c) + d

with C the samples seen, fitted by ``scipy.optimize.curve_fit`` on every (budget, seed) point
of all budgets but the largest; the largest is held out and the fit is checked on it (the
absolute difference between predicted and observed mean top-1). Internally C is measured in
units of the smallest budget (``x = C / C_min``) so that the parameters are of order one; the
bounds, in those units, are

    0 < a <= 1000,   0 <= b <= 10 (b <= 10 * C_min samples),   0.001 <= c <= 2,   0 <= d <= 1

and the reported ``a`` and ``b`` are converted back to samples (``a * C_min ** c``, ``b * C_min``).

The rule on budgets: the free parameters may not outnumber the fitted budgets. With 5 or more
budgets all four are fitted on the first n - 1; with exactly 4 budgets ``b`` is fixed at 0 (three
fitted budgets cannot determine four parameters) and the form is ``a * C ** (-c) + d``; fewer
than 4 budgets is refused. Intervals come from a bootstrap over seeds: at each budget the seeds'
points are drawn with replacement, the law is refitted, and the 2.5 and 97.5 percentiles of
the refitted parameters and predictions are reported (fixed rng seed, so a rerun is identical).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import OptimizeWarning, brentq, curve_fit

from curate.errors import UserError

logger = logging.getLogger(__name__)

MIN_BUDGETS = 4  # 3 fitted (b fixed at 0) + 1 held out
FULL_FORM_BUDGETS = 5  # 4 fitted (all four parameters) + 1 held out
EXTRAPOLATE = 10.0  # predictions and plots reach 10x the largest budget
BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_SEED = 0
INTERVAL = (2.5, 97.5)  # percentiles of the bootstrap: a 95% interval
PARAMS = ("a", "b", "c", "d")
# bounds in units of the smallest budget (see the module docstring)
LOWER = np.array([1e-9, 0.0, 1e-3, 0.0])
UPPER = np.array([1e3, 10.0, 2.0, 1.0])


class FitError(UserError):
    """The law cannot be fitted to these points (too few budgets, bad or flat points)."""


def law(budget: np.ndarray | float, a: float, b: float, c: float, d: float) -> np.ndarray:
    """err(C) = a * (C + b) ** (-c) + d (any consistent unit of C)."""
    return a * np.power(np.asarray(budget, dtype=np.float64) + b, -c) + d


def _law_b0(x: np.ndarray, a: float, c: float, d: float) -> np.ndarray:
    return law(x, a, 0.0, c, d)


@dataclass(frozen=True)
class Points:
    """Top-1 per (budget, seed) of one training set: ``top1[budget] = [one value per seed]``."""

    top1: Mapping[int, Sequence[float]]

    @property
    def budgets(self) -> list[int]:
        return sorted(self.top1)

    def arrays(self, budgets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(budget, top-1) of every seed's point at ``budgets``, flattened."""
        xs = [float(b) for b in budgets for _ in self.top1[b]]
        ys = [float(v) for b in budgets for v in self.top1[b]]
        return np.array(xs), np.array(ys)

    def mean(self, budget: int) -> float:
        return float(np.mean(self.top1[budget]))


def _fit_once(x: np.ndarray, err: np.ndarray, full: bool, start: np.ndarray) -> np.ndarray:
    """Parameters (a, b, c, d) in units of the smallest budget; raises RuntimeError/ValueError
    when curve_fit fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        if full:
            params, _ = curve_fit(law, x, err, p0=start, bounds=(LOWER, UPPER), maxfev=20_000)
        else:
            keep = [0, 2, 3]
            found, _ = curve_fit(_law_b0, x, err, p0=start[keep], bounds=(LOWER[keep],
                                 UPPER[keep]), maxfev=20_000)
            params = np.array([found[0], 0.0, found[1], found[2]])
    if not np.all(np.isfinite(params)):
        raise RuntimeError("non-finite parameters")
    return params


def _starts(x: np.ndarray, err: np.ndarray) -> list[np.ndarray]:
    """A few starting points inside the bounds: curve_fit finds a local optimum only."""
    low, high = float(err.min()), float(err.max())
    d0 = min(max(low - 0.05, 0.0), 0.99)
    starts = []
    for c0 in (0.5, 1.0, 0.2):
        a0 = max((high - d0) * float(x.min()) ** c0, 1e-3)
        starts.append(np.clip(np.array([a0, 0.5, c0, d0]), LOWER + 1e-6, UPPER - 1e-6))
    return starts


def _best_fit(x: np.ndarray, err: np.ndarray, full: bool) -> np.ndarray:
    best, best_loss, last_error = None, math.inf, None
    for start in _starts(x, err):
        try:
            params = _fit_once(x, err, full, start)
        except (RuntimeError, ValueError) as exc:
            last_error = exc
            continue
        loss = float(np.sum((law(x, *params) - err) ** 2))
        if loss < best_loss:
            best, best_loss = params, loss
    if best is None:
        raise RuntimeError(str(last_error))
    return best


@dataclass
class CurveFit:
    """The fitted law of one training set, its check on the held-out budget and its intervals."""

    label: str
    budgets: list[int]
    scale: float  # C_min: the unit of C inside the fit
    params: np.ndarray  # a, b, c, d in units of ``scale``
    full_form: bool
    r2: float
    held_out: dict[str, float]
    boot: np.ndarray  # bootstrap parameters, rows of (a, b, c, d) in units of ``scale``
    boot_failed: int = 0
    seeds: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def error(self, budget: np.ndarray | float) -> np.ndarray:
        return law(np.asarray(budget, dtype=np.float64) / self.scale, *self.params)

    def top1(self, budget: np.ndarray | float) -> np.ndarray:
        return 1.0 - self.error(budget)

    def top1_band(self, budget: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """The bootstrap interval of predicted top-1 at ``budget`` (a point or an array)."""
        x = np.atleast_1d(np.asarray(budget, dtype=np.float64)) / self.scale
        if not len(self.boot):
            value = 1.0 - law(x, *self.params)
            return value, value
        curves = 1.0 - np.stack([law(x, *p) for p in self.boot])
        low, high = np.percentile(curves, INTERVAL, axis=0)
        return low, high

    def samples_for(self, top1: float) -> float | None:
        """Samples seen this curve needs to reach ``top1`` (its inverse); None when ``top1`` is
        at or above the curve's ceiling 1 - d."""
        return _invert(self.params, top1, self.scale)

    def reported_params(self, params: np.ndarray | None = None) -> dict[str, float]:
        """a, b, c, d with C in samples seen (a * C_min ** c, b * C_min)."""
        a, b, c, d = self.params if params is None else params
        return {"a": float(a * self.scale**c), "b": float(b * self.scale), "c": float(c),
                "d": float(d)}

    def intervals(self) -> dict[str, list[float]]:
        if not len(self.boot):
            return {k: [v, v] for k, v in self.reported_params().items()}
        converted = np.array([list(self.reported_params(p).values()) for p in self.boot])
        low, high = np.percentile(converted, INTERVAL, axis=0)
        return {k: [float(lo), float(hi)] for k, lo, hi in zip(PARAMS, low, high, strict=True)}

    def prediction(self, budget: float) -> dict[str, Any]:
        low, high = self.top1_band(budget)
        return {"budget": float(budget), "top1": float(self.top1(budget)),
                "band": [float(low[0]), float(high[0])]}

    def to_dict(self) -> dict[str, Any]:
        largest = max(self.budgets)
        return {
            "label": self.label,
            "form": "a * (C + b)^(-c) + d" if self.full_form else "a * C^(-c) + d (b fixed at 0)",
            "params": self.reported_params(),
            "intervals": self.intervals(),
            "interval_percentiles": list(INTERVAL),
            "budgets": self.budgets,
            "fitted_budgets": self.budgets[:-1],
            "held_out": self.held_out,
            "r2": self.r2,
            "predicted_at_10x": self.prediction(EXTRAPOLATE * largest),
            "bootstrap": {"resamples": int(len(self.boot)) + self.boot_failed,
                          "failed": self.boot_failed, "seed": BOOTSTRAP_SEED,
                          "seeds": self.seeds},
            **self.extra,
        }


def _invert(params: np.ndarray, top1: float, scale: float) -> float | None:
    a, b, c, d = params
    gap = (1.0 - top1) - d
    if gap <= 0:
        return None
    return float(max((gap / a) ** (-1.0 / c) - b, 0.0) * scale)


def _check_points(label: str, points: Points) -> None:
    budgets = points.budgets
    if len(budgets) < MIN_BUDGETS:
        raise FitError(
            f"'{label}': {len(budgets)} budgets ({', '.join(map(str, budgets)) or 'none'}) are "
            f"too few to fit err(C) = a*(C+b)^-c + d: give at least {MIN_BUDGETS} (all but the "
            f"largest are fitted, the largest checks the fit; {FULL_FORM_BUDGETS} or more fit "
            "all four parameters)")
    for budget in budgets:
        values = np.asarray(points.top1[budget], dtype=np.float64)
        if not len(values):
            raise FitError(f"'{label}': no point at budget {budget}")
        if not np.all(np.isfinite(values)):
            raise FitError(f"'{label}': zero-shot top-1 at budget {budget} is not a number "
                           f"({values.tolist()}); the fit needs finite points")
    _, ys = points.arrays(budgets[:-1])
    if float(np.ptp(ys)) == 0.0:
        raise FitError(f"'{label}': zero-shot top-1 is {ys[0]:g} at every fitted budget; a flat "
                       "curve determines no scaling law (train longer or on more budgets)")


def fit_curve(label: str, points: Points, resamples: int = BOOTSTRAP_RESAMPLES) -> CurveFit:
    """Fit the law to every point of all budgets but the largest, check it on the largest and
    bootstrap the seeds; a FitError (one line) when it cannot be done."""
    _check_points(label, points)
    budgets = points.budgets
    fitted, largest = budgets[:-1], budgets[-1]
    scale = float(budgets[0])
    full = len(budgets) >= FULL_FORM_BUDGETS
    xs, ys = points.arrays(fitted)
    try:
        params = _best_fit(xs / scale, 1.0 - ys, full)
    except RuntimeError as exc:
        raise FitError(f"'{label}': the scaling-law fit failed ({exc}); the points do not follow "
                       "a saturating curve") from None
    residual = float(np.sum((law(xs / scale, *params) - (1.0 - ys)) ** 2))
    total = float(np.sum((ys - ys.mean()) ** 2))
    r2 = 1.0 - residual / total
    predicted = float(1.0 - law(largest / scale, *params))
    observed = points.mean(largest)
    held_out = {"budget": largest, "observed_top1": observed, "predicted_top1": predicted,
                "abs_error": abs(predicted - observed)}
    boot, failed = _bootstrap(points, fitted, scale, full, params, resamples)
    seeds = max(len(points.top1[b]) for b in budgets)
    logger.info("fit %s: params %s, R^2 %.3f, held-out error %.4f", label, params, r2,
                held_out["abs_error"])
    return CurveFit(label, budgets, scale, params, full, r2, held_out, boot, failed, seeds)


def _bootstrap(points: Points, fitted: list[int], scale: float, full: bool, start: np.ndarray,
               resamples: int) -> tuple[np.ndarray, int]:
    """Refit on seeds drawn with replacement at each budget; (parameters, failed refits)."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    found, failed = [], 0
    for _ in range(resamples):
        xs, ys = [], []
        for budget in fitted:
            values = np.asarray(points.top1[budget], dtype=np.float64)
            drawn = values[rng.integers(0, len(values), len(values))]
            xs += [budget / scale] * len(drawn)
            ys += drawn.tolist()
        try:
            found.append(_fit_once(np.array(xs), 1.0 - np.array(ys), full, start))
        except (RuntimeError, ValueError):
            failed += 1
    return (np.array(found) if found else np.empty((0, 4))), failed


def crossings(fits: Sequence[CurveFit], low: float, high: float) -> list[dict[str, Any]]:
    """Budgets in [low, high] where two fitted top-1 curves cross, with who leads after."""
    grid = np.geomspace(low, high, 400)
    found = []
    for i, first in enumerate(fits):
        for second in fits[i + 1:]:
            gap = first.top1(grid) - second.top1(grid)
            for k in np.nonzero(np.sign(gap[:-1]) * np.sign(gap[1:]) < 0)[0]:
                where = float(brentq(lambda c, f=first, s=second: float(f.top1(c) - s.top1(c)),
                                     grid[k], grid[k + 1]))
                after = first.label if gap[k + 1] > 0 else second.label
                before = second.label if after == first.label else first.label
                found.append({"curves": [first.label, second.label], "budget": where,
                              "top1": float(first.top1(where)), "leads_before": before,
                              "leads_after": after})
    return found


def efficiency(plain: CurveFit, reinforced: Points) -> list[dict[str, Any]]:
    """Per budget of ``reinforced``: the samples seen plain training needs (its fitted curve
    inverted) to reach reinforced training's mean top-1 there, and that over the budget (the
    learning-efficiency factor), with the factor per seed and a bootstrap interval (plain's
    bootstrap curves, reinforced seeds drawn with replacement). None where the target is at or
    above plain's fitted ceiling 1 - d."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    rows = []
    for budget in sorted(reinforced.top1):
        values = np.asarray(reinforced.top1[budget], dtype=np.float64)
        target = float(values.mean())
        needed = plain.samples_for(target)
        per_seed = [_ratio(plain.samples_for(float(v)), budget) for v in values]
        boot = []
        for params in plain.boot:
            drawn = values[rng.integers(0, len(values), len(values))]
            boot.append(_invert(params, float(drawn.mean()), plain.scale))
        reached = [b / budget for b in boot if b is not None]
        rows.append({
            "budget": budget, "reinforced_top1": target,
            "plain_top1": float(plain.top1(budget)),
            "plain_samples_needed": needed,
            "factor": _ratio(needed, budget),
            "factor_per_seed": per_seed,
            "factor_interval": ([float(v) for v in np.percentile(reached, INTERVAL)]
                                if reached else None),
            "beyond_plain_ceiling": needed is None,
        })
    return rows


def _ratio(needed: float | None, budget: int) -> float | None:
    return None if needed is None else needed / budget
