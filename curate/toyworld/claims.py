"""What the demo claims, checked against its own results.

The demo exists to show that a DFN picks a better training set. Each claim below is computed
from ``demo_results.json``'s numbers (never asserted by hand) and reported as holding or not,
with the figures behind it, in the printed table, the JSON and ``demo_report.md``:

* the DFN itself is a good model of the world: zero-shot top-1 >= ``MIN_FILTER_TOP1``;
* DFN-30 is cleaner: its precision (hidden labels) is above random's and no filter's;
* DFN-30 trains better students: mean top-1 at least ``MIN_RATIO`` x no filter's, and every
  DFN-30 seed above every seed of every baseline subset;
* the scaling comparison agrees at every budget: DFN-30's mean top-1 is above every other
  curve's at each budget trained.

At the small (CI) scale the budgets are far too small for the accuracy claims; the claims are
still computed and reported, and do not hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DFN_SUBSET = "dfn_30"
NO_FILTER = "no_filter"
RANDOM = "random"
BASELINES = ("no_filter", "random", "basic", "web_clip_30")
MIN_FILTER_TOP1 = 0.5
MIN_RATIO = 2.0


def _claim(name: str, holds: bool, detail: str) -> dict[str, Any]:
    return {"claim": name, "holds": bool(holds), "detail": detail}


def _filter_claim(filters: Mapping[str, Any]) -> dict[str, Any] | None:
    if "dfn" not in filters:
        return None
    top1 = filters["dfn"].get("metrics", {}).get("zero_shot_top1")
    return _claim(f"the DFN reaches zero-shot top-1 >= {MIN_FILTER_TOP1}",
                  top1 is not None and top1 >= MIN_FILTER_TOP1,
                  f"DFN zero-shot top-1 {'n/a' if top1 is None else f'{top1:.4f}'}")


def _subset_claims(rows: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    if DFN_SUBSET not in rows:
        return []
    dfn = rows[DFN_SUBSET]
    claims = []
    others = [rows[n] for n in (RANDOM, NO_FILTER) if n in rows]
    if others:
        claims.append(_claim(
            f"{DFN_SUBSET} is cleaner than {' and '.join(r['name'] for r in others)}",
            all(dfn["precision"] > r["precision"] for r in others),
            ", ".join(f"precision {r['name']} {r['precision']:.3f}" for r in [dfn, *others])))
    if NO_FILTER in rows:
        base = rows[NO_FILTER]["top1_mean"]
        ratio = dfn["top1_mean"] / base if base > 0 else float("inf")
        claims.append(_claim(
            f"{DFN_SUBSET}'s mean top-1 is at least {MIN_RATIO:g}x {NO_FILTER}'s",
            ratio >= MIN_RATIO,
            f"{dfn['top1_mean']:.4f} / {base:.4f} = {ratio:.2f}x"))
    baselines = [rows[n] for n in BASELINES if n in rows]
    if baselines:
        best = max(baselines, key=lambda r: max(r["top1"]))
        claims.append(_claim(
            f"every {DFN_SUBSET} seed beats every baseline seed",
            min(dfn["top1"]) > max(best["top1"]),
            f"{DFN_SUBSET} lowest seed {min(dfn['top1']):.4f}, best baseline seed "
            f"{max(best['top1']):.4f} ({best['name']})"))
    return claims


def _comparison_claim(comparison: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not comparison or DFN_SUBSET not in comparison.get("means", {}):
        return None
    means = comparison["means"]
    behind = []
    for budget, value in sorted(means[DFN_SUBSET].items(), key=lambda kv: int(kv[0])):
        best_other = max(((m[budget], label) for label, m in means.items()
                          if label != DFN_SUBSET and budget in m), default=None)
        if best_other is not None and value <= best_other[0]:
            behind.append(f"{int(budget):,} ({value:.4f} vs {best_other[1]} {best_other[0]:.4f})")
    budgets = ", ".join(f"{int(b):,}" for b in sorted(means[DFN_SUBSET], key=int))
    return _claim(
        f"{DFN_SUBSET}'s curve is above the others at every budget",
        not behind,
        f"budgets {budgets}: " + ("above at each" if not behind
                                  else "not above at " + "; ".join(behind)))


def demo_claims(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each claim of the demo with whether it holds and the figures behind it."""
    rows = {row["name"]: row for row in results.get("subsets", [])}
    claims = [_filter_claim(results.get("filters", {})), *_subset_claims(rows),
              _comparison_claim(results.get("comparison"))]
    return [c for c in claims if c is not None]
