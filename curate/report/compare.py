"""The report's "Scaling comparisons" section: each ``RUN/compare/NAME/`` plot and its table."""

from __future__ import annotations

import base64
import json
import logging
from html import escape
from pathlib import Path

from curate.compare import COMPARE_DIR, COMPARE_JSON, COMPARE_PNG
from curate.report import html as H

logger = logging.getLogger(__name__)


def _one(folder: Path) -> str:
    record = json.loads((folder / COMPARE_JSON).read_text())
    largest = max(record["settings"]["budgets"])
    rows = []
    for curve in record["curves"]:
        at10, held = curve["predicted_at_10x"], curve["held_out"]
        rows.append((curve["label"], held["observed_top1"], held["predicted_top1"],
                     held["abs_error"], curve["r2"], at10["top1"],
                     f"{at10['band'][0]:.4f} - {at10['band'][1]:.4f}"))
    parts = [
        f"<h3>{escape(folder.name)}</h3>",
        f'<p class="note">{escape(record["law"])}; budgets '
        f"{', '.join(f'{b:,}' for b in record['settings']['budgets'])}, "
        f"{record['settings']['seeds']} seeds, student {escape(record['settings']['model'])}"
        "; fitted on all but the largest budget, checked on it.</p>",
        H.image("data:image/png;base64," + base64.b64encode(
            (folder / COMPARE_PNG).read_bytes()).decode("ascii"), f"comparison {folder.name}"),
        H.table(rows, ("curve", f"top-1 @{largest:,}", "predicted", "held-out error", "R^2",
                       f"top-1 @{10 * largest:,}", "95% band")),
    ]
    if record["crossings"]:
        parts.append(H.table([(" x ".join(c["curves"]), c["budget"], c["top1"], c["leads_after"])
                              for c in record["crossings"]],
                             ("curves", "cross at samples seen", "top-1", "leads after")))
    if record.get("efficiency"):
        parts.append(H.table(
            [(r["budget"], r["reinforced_top1"], r["plain_top1"],
              "beyond plain's ceiling" if r["factor"] is None else r["factor"],
              "-" if not r["factor_interval"] else
              f"{r['factor_interval'][0]:.2f} - {r['factor_interval'][1]:.2f}")
             for r in record["efficiency"]],
            ("budget", "reinforced top-1", "plain top-1 (fit)", "efficiency factor", "95% band")))
    return "".join(parts)


def compare_section(run: Path) -> str:
    """HTML for every finished comparison of the run ('' when there is none)."""
    parts = []
    for folder in sorted((Path(run) / COMPARE_DIR).glob("*/")):
        if (folder / COMPARE_JSON).is_file() and (folder / COMPARE_PNG).is_file():
            try:
                parts.append(_one(folder))
            except (KeyError, TypeError, ValueError) as exc:
                logger.warning("report: skipping comparison %s (%s)", folder, exc)
    return "".join(parts)
