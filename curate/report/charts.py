"""Matplotlib figures rendered to PNG data URIs (no files, no network).

Figures are built with ``matplotlib.figure.Figure`` directly, not pyplot, so that importing
this module never changes the backend of a notebook or script that uses it.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # matplotlib (~0.3 s) loads when a chart is drawn, not at startup
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def subplots(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure with one axis, outside pyplot's global state."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.add_subplot()


def figure_uri(figure: Figure) -> str:
    """The figure as a ``data:image/png`` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def score_histogram(
    scorer: str, edges: np.ndarray, counts: dict[str, np.ndarray], threshold: float | None
) -> str:
    """Histogram of one scorer's scores, one series per pool status, the cut marked."""
    figure, axis = subplots(6.4, 3.2)
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    bottom = np.zeros(len(centers))
    for status, series in counts.items():
        axis.bar(centers, series, width=width, bottom=bottom, label=status, align="center")
        bottom += series
    if threshold is not None:
        axis.axvline(threshold, color="black", linestyle="--", label=f"cut {threshold:.4f}")
    axis.set_xlabel(f"{scorer}_score")
    axis.set_ylabel("samples")
    axis.legend(fontsize="small")
    return figure_uri(figure)


def kept_curve(
    scorer: str, thresholds: np.ndarray, kept_fraction: np.ndarray, threshold: float | None
) -> str:
    """Kept fraction of the scored samples against the threshold."""
    figure, axis = subplots(6.4, 3.2)
    axis.plot(thresholds, kept_fraction, color="tab:blue")
    if threshold is not None:
        axis.axvline(threshold, color="black", linestyle="--", label=f"cut {threshold:.4f}")
        axis.legend(fontsize="small")
    axis.set_xlabel(f"threshold on {scorer}_score")
    axis.set_ylabel("kept fraction")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    return figure_uri(figure)


def drop_reasons(first: dict[str, int], any_failure: dict[str, int]) -> str:
    """Dropped samples per filter: as the first failing filter, and failing at all."""
    labels = list(any_failure)
    figure, axis = subplots(6.4, 0.5 + 0.45 * max(len(labels), 1))
    positions = np.arange(len(labels))
    axis.barh(positions + 0.2, [any_failure[k] for k in labels], height=0.4, label="fails")
    axis.barh(
        positions - 0.2, [first.get(k, 0) for k in labels], height=0.4, label="first failing filter"
    )
    axis.set_yticks(positions, labels, fontsize="small")
    axis.invert_yaxis()
    axis.set_xlabel("samples")
    axis.legend(fontsize="small")
    return figure_uri(figure)
