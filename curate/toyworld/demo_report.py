"""The demo's written report: a markdown page with PNG plots beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

REPORT_FILE = "demo_report.md"


def _top1_plot(subsets: list[dict[str, Any]], path: Path) -> None:
    names = [s["name"] for s in subsets]
    means = np.array([s["top1_mean"] for s in subsets])
    low = means - np.array([min(s["top1"]) for s in subsets])
    high = np.array([max(s["top1"]) for s in subsets]) - means
    figure = Figure(figsize=(7, 3.5))
    axis = figure.add_subplot()
    axis.bar(names, means, yerr=[low, high], capsize=4, color="tab:blue")
    for i, s in enumerate(subsets):
        axis.scatter([i] * len(s["top1"]), s["top1"], color="black", s=10, zorder=3)
    axis.set_ylabel("zero-shot top-1 (EVAL)")
    axis.set_title("student accuracy by training subset (bar: mean; whiskers: min-max)")
    axis.tick_params(axis="x", rotation=20)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _mix_plot(subsets: list[dict[str, Any]], path: Path) -> None:
    labels = sorted({k for s in subsets for k in s["label_mix"]}, key=lambda k: (k != "clean", k))
    figure = Figure(figsize=(7, 3.5))
    axis = figure.add_subplot()
    bottom = np.zeros(len(subsets))
    for label in labels:
        share = np.array([s["label_mix"].get(label, 0) / max(1, s["size"]) for s in subsets])
        axis.bar([s["name"] for s in subsets], share, bottom=bottom, label=label)
        bottom += share
    axis.set_ylabel("share of the subset")
    axis.set_title("hidden ground truth of each subset")
    axis.legend(fontsize="x-small", ncol=3)
    axis.tick_params(axis="x", rotation=20)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _comparison_lines(comparison: dict[str, Any] | None) -> list[str]:
    """The scaling comparison: mean top-1 per curve and budget, each fit's check, the plot."""
    if not comparison:
        return []
    budgets = [str(b) for b in comparison["budgets"]]
    lines = ["", "## Scaling comparison", "",
             f"Students trained at each budget (samples seen), seeds {comparison['seeds']}; "
             f"`filter-pool compare` fits err(C) = a(C+b)^-c + d on all but the largest budget "
             f"and checks it there ({comparison['path']}).", "",
             "| curve | " + " | ".join(f"{int(b):,}" for b in budgets)
             + " | held-out error | R^2 |",
             "|---|" + "---:|" * (len(budgets) + 2)]
    fits = {c["label"]: c for c in comparison["curves"]}
    for label, means in comparison["means"].items():
        fit = fits.get(label, {})
        cells = [f"{means[b]:.4f}" if b in means else "" for b in budgets]
        lines.append(f"| {label} | " + " | ".join(cells)
                     + f" | {fit.get('held_out_abs_error', float('nan')):.4f}"
                     + f" | {fit.get('r2', float('nan')):.3f} |")
    lines += ["", f"![scaling comparison]({comparison['plot']})"]
    return lines


def write_demo_report(out: Path, results: dict[str, Any]) -> Path:
    """Write ``demo_report.md`` with ``demo_top1.png`` and ``demo_label_mix.png``."""
    subsets = results["subsets"]
    _top1_plot(subsets, out / "demo_top1.png")
    _mix_plot(subsets, out / "demo_label_mix.png")
    settings = results["settings"]
    lines = [
        "# filter-pool demo: does the DFN pick a better training set?",
        "",
        f"Scale `{results['scale']}`. Every subset trains a fresh `{settings['filter_model']}` "
        f"student for {settings['student_samples']} samples seen, seeds {settings['seeds']}; "
        "zero-shot top-1 on the world's EVAL split. Precision is the share of the subset "
        "that the hidden labels call clean.",
        "",
        "| subset | size | precision | top-1 mean | min | max | per seed |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for s in subsets:
        lines.append(
            f"| {s['name']} | {s['size']} | {s['precision']:.3f} | "
            f"{s['top1_mean']:.4f} | {min(s['top1']):.4f} | {max(s['top1']):.4f} | "
            + ", ".join(f"{v:.4f}" for v in s["top1"])
            + " |"
        )
    best_baseline = max(
        (s for s in subsets if not s["name"].startswith("dfn")), key=lambda s: s["top1_mean"]
    )
    lines += ["", "## Verdict", ""]
    for s in subsets:
        if not s["name"].startswith("dfn"):
            continue
        margin = s["top1_mean"] - best_baseline["top1_mean"]
        spread = max(s["top1_spread"], best_baseline["top1_spread"])
        verdict = "beats" if margin > spread else "does not clearly beat"
        lines.append(
            f"- `{s['name']}` {verdict} the best baseline `{best_baseline['name']}`: "
            f"{margin:+.4f} top-1 against a seed spread of {spread:.4f}."
        )
    lines += ["", "## Claims", ""]
    lines += [f"- {'holds' if c['holds'] else '**does not hold**'}: {c['claim']} ({c['detail']})"
              for c in results.get("claims", [])]
    lines += [
        "",
        "![top-1 by subset](demo_top1.png)",
        "",
        "![ground truth by subset](demo_label_mix.png)",
        "",
        "## Filters",
        "",
    ]
    for name, record in results["filters"].items():
        metrics = record["metrics"]
        lines.append(
            f"- `{name}` ({record['train_dir']}): {record['samples_seen']} samples seen; "
            f"its own zero-shot top-1 {metrics.get('zero_shot_top1', float('nan')):.4f}, "
            f"held-out recall@1 i->t {metrics.get('image_to_text_r1', float('nan')):.4f}"
        )
    lines += _comparison_lines(results.get("comparison"))
    lines += ["", "## Timings (s)", ""]
    lines += [f"- {stage}: {seconds}" for stage, seconds in results.get("timings", {}).items()]
    path = out / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    return path
