"""``filter-pool report``: one self-contained HTML file about a run (and one of its subsets).

Sections: the pool (size, shards, download statuses), each scorer (model, statuses, score
histogram, kept fraction against threshold), the subset's filters and drop reasons, saved
sweep plots, image grids around the cut (the top, just above it (kept), just below it
(dropped), samples above it dropped by another filter, and the bottom) and, per derived table,
its largest duplicate groups or its largest kept and dropped clusters. Images are read from
the pool's shard tars and embedded as thumbnails; the file needs no network.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from curate.errors import UserError
from curate.io.schema import canonical_score_column
from curate.io.workspace import SCORER_FILE, RunPaths, atomic_path, check_apart
from curate.report import charts
from curate.report import html as H
from curate.report.compare import compare_section
from curate.report.data import (
    Grid,
    SubsetInfo,
    counts,
    fraction_threshold,
    grid_rows,
    histogram,
    kept_fraction_curve,
    scored,
)
from curate.report.groups import derived_sections
from curate.report.thumbnails import read_thumbnails
from curate.tables.views import (
    connect,
    derived_names,
    path_literal,
    samples_layout,
    score_names,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportConfig:
    """Which run (and subset) to report on, where to write it, how many images per grid."""

    run: Path
    out: Path
    subset: str | None = None
    scorer: str | None = None
    fraction: float = 0.3
    grid_size: int = 8
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        object.__setattr__(self, "out", Path(self.out))
        if not 0 < self.fraction <= 1:
            raise UserError(f"--fraction must be in (0, 1], got {self.fraction}")
        if self.grid_size < 1:
            raise UserError(f"--grid-size must be at least 1, got {self.grid_size}")
        if self.out.suffix.lower() not in (".html", ".htm"):
            raise UserError(f"--out {self.out}: the report is an .html file")


@dataclass
class ReportSummary:
    """What the report holds."""

    out: Path
    scorers: list[str]
    subset: str | None
    cut: dict[str, Any] | None
    images: int
    bytes: int
    grids: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "scorers": self.scorers,
            "subset": self.subset,
            "cut": self.cut,
            "images": self.images,
            "bytes": self.bytes,
            "grids": self.grids,
        }

    def text(self) -> str:
        return f"report -> {self.out} ({self.images} images, {self.bytes / 1e6:.1f} MB)"


def _pool_section(con, run: dict[str, Any]) -> str:
    total = con.execute("SELECT count(*) FROM pool").fetchall()[0][0]
    statuses = counts(con, "SELECT status, count(*) FROM pool GROUP BY 1 ORDER BY 2 DESC")
    source = run.get("source", {})
    facts = [
        ("samples", total),
        ("shards", len(run.get("shards", []))),
        ("source", f"{source.get('kind', '?')}: {source.get('path', '?')}"),
    ]
    return (
        H.table(facts, ("", ""))
        + "<p>Download status (img2dataset):</p>"
        + H.table(
            [(k, v, v / total if total else 0.0) for k, v in statuses.items()],
            ("status", "samples", "share"),
        )
    )


def _scorer_section(
    con, paths: RunPaths, name: str, cut: float | None, subset: SubsetInfo | None
) -> str:
    column = f"{name}_score"
    record_file = paths.scores_dir(name) / SCORER_FILE
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    statuses = counts(
        con, f'SELECT "{name}_status", count(*) FROM samples GROUP BY 1 ORDER BY 2 DESC'
    )
    stats = con.execute(
        f'SELECT count(*), avg("{column}"), min("{column}"), quantile_cont("{column}", 0.5), '
        f'max("{column}") FROM samples WHERE {scored(column)}'
    ).fetchall()[0]
    if subset is not None:
        manifest = path_literal(subset.manifest)
        kept = f"(shard, key) IN (SELECT (shard, key) FROM read_parquet({manifest}))"
        series = {f"kept in {subset.name}": kept, "dropped": f"NOT {kept}"}
    else:
        series = {"scored": "TRUE"}
    edges, by_series = histogram(con, column, series)
    thresholds, kept_fraction = kept_fraction_curve(con, column)
    parts = [
        H.table(
            [
                ("model", record.get("model", "?")),
                ("weights", record.get("weights", "?")),
                ("precision", record.get("precision", "auto")),
            ],
            ("", ""),
        ),
        H.table([(k, v) for k, v in statuses.items()], ("status", "samples")),
        H.table(
            [(int(stats[0]),) + tuple(float(v) if v is not None else "-" for v in stats[1:])],
            ("scored", "mean", "min", "median", "max"),
        ),
    ]
    if by_series:
        parts.append(
            H.image(charts.score_histogram(name, edges, by_series, cut), f"{name} score histogram")
        )
    if len(thresholds):
        parts.append(
            H.image(
                charts.kept_curve(name, thresholds, kept_fraction, cut),
                f"{name} kept fraction against threshold",
            )
        )
    return "".join(parts)


def _subset_section(subset: SubsetInfo) -> str:
    record = subset.record
    filters = [
        (f.get("label", f.get("name")), json.dumps(f.get("resolved", {})))
        for f in record.get("filters", [])
    ]
    first = record.get("dropped_by_first_failing_filter", {})
    failing = record.get("failing_per_filter", {})
    parts = [
        H.table(
            [
                ("command", record.get("command", "?")),
                ("kept", record.get("kept", 0)),
                ("of", record.get("total", 0)),
                ("kept fraction", record.get("kept_fraction", 0.0)),
            ],
            ("", ""),
        ),
        H.table(filters, ("filter", "resolved")),
        "<p>Drop reasons (a sample counts once under its first failing filter):</p>",
        H.table(
            [(k, first.get(k, 0), v) for k, v in failing.items()],
            ("filter", "first failing", "failing"),
        ),
    ]
    if failing:
        parts.append(H.image(charts.drop_reasons(first, failing), "drop reasons"))
    return "".join(parts)


def _sweeps_section(paths: RunPaths) -> str:
    plots = sorted((paths.root / "sweeps").glob("*/sweep.png"))
    return "".join(
        f"<h3>{plot.parent.name}</h3>"
        + H.image(
            "data:image/png;base64," + base64.b64encode(plot.read_bytes()).decode("ascii"),
            f"sweep {plot.parent.name}",
        )
        for plot in plots
    )


def _grids(con, column: str, cut: float, subset: SubsetInfo | None, size: int) -> list[Grid]:
    base = f'SELECT shard, key, text, "{column}", {{reason}} FROM {{source}} WHERE {scored(column)}'
    plain = base.format(reason="NULL", source="samples")
    grids = [
        Grid(
            "Top",
            "highest scores",
            grid_rows(con, f'{plain} ORDER BY "{column}" DESC LIMIT {size}'),
        ),
    ]
    if subset is None:
        above = f'{plain} AND "{column}" >= {cut!r} ORDER BY "{column}" ASC LIMIT {size}'
        below = f'{plain} AND "{column}" < {cut!r} ORDER BY "{column}" DESC LIMIT {size}'
        grids += [
            Grid("Just above the cut (kept)", f"score >= {cut:.4f}", grid_rows(con, above)),
            Grid("Just below the cut (dropped)", f"score < {cut:.4f}", grid_rows(con, below)),
        ]
    else:
        manifest = path_literal(subset.manifest)
        kept_source = f"samples SEMI JOIN read_parquet({manifest}) m USING (shard, key)"
        # dropped.parquet holds uid and reasons (DataComp pools: the uid names the sample)
        dropped_source = f"samples JOIN read_parquet({path_literal(subset.dropped)}) d USING (uid)"
        kept = base.format(reason="NULL", source=kept_source)
        dropped = base.format(reason="d.first_failed_filter", source=dropped_source)
        grids += [
            Grid(
                "Kept, just above the cut",
                f"in {subset.name}, lowest scores",
                grid_rows(con, f'{kept} ORDER BY "{column}" ASC LIMIT {size}'),
            ),
            Grid(
                "Dropped, just below the cut",
                f"score < {cut:.4f}, highest first",
                grid_rows(
                    con, f'{dropped} AND "{column}" < {cut!r} ORDER BY "{column}" DESC LIMIT {size}'
                ),
            ),
            Grid(
                "Dropped by another filter despite a score above the cut",
                "first failing filter in red",
                grid_rows(
                    con,
                    f'{dropped} AND "{column}" >= {cut!r} ORDER BY "{column}" DESC LIMIT {size}',
                ),
            ),
        ]
    grids.append(
        Grid(
            "Bottom",
            "lowest scores",
            grid_rows(con, f'{plain} ORDER BY "{column}" ASC LIMIT {size}'),
        )
    )
    return grids


def _choose_cut(
    con, config: ReportConfig, scorers: list[str], subset: SubsetInfo | None
) -> tuple[str, float | None, str]:
    """(scorer, threshold, where the threshold comes from) for the grids and plots."""
    subset_cut = subset.cut() if subset else None
    if config.scorer is not None:
        name = canonical_score_column(config.scorer).removesuffix("_score")  # dfn, dfn_score
        if name not in scorers:
            raise UserError(
                f"--scorer {config.scorer}: the run's scorers are {', '.join(scorers) or 'none'}"
            )
    elif subset_cut is not None:
        name = subset_cut[0].removesuffix("_score")
    else:
        name = scorers[0]
    if subset_cut is not None and subset_cut[0].removesuffix("_score") == name:
        return name, subset_cut[1], f"subset {subset.name}"
    threshold = fraction_threshold(con, f"{name}_score", config.fraction)
    return name, threshold, f"top {config.fraction:g} of {name} (DataComp rule)"


def build_report(config: ReportConfig) -> ReportSummary:
    """Write the report for ``config.run`` to ``config.out``; return what it holds."""
    check_apart(config.out, [config.run])
    if config.out.exists() and not config.overwrite:
        raise UserError(f"{config.out} exists; pass --overwrite to replace it")
    if config.out.exists() and H.GENERATOR.encode() not in config.out.read_bytes()[:4096]:
        raise UserError(f"--out {config.out} exists and was not made by `filter-pool report`; "
                        "--overwrite replaces only a report, so it is left untouched")
    paths = RunPaths(config.run)
    run = paths.read_run()
    con = connect(paths.root)
    scorers = score_names(paths.root)
    subset = SubsetInfo.read(paths.root, config.subset) if config.subset else None
    sections = [("Pool", _pool_section(con, run))]
    cut_info: dict[str, Any] | None = None
    grids: list[Grid] = []
    if scorers:
        name, threshold, origin = _choose_cut(con, config, scorers, subset)
        for scorer in scorers:
            sections.append(
                (
                    f"Scorer {scorer}",
                    _scorer_section(
                        con, paths, scorer, threshold if scorer == name else None, subset
                    ),
                )
            )
        if threshold is not None:
            cut_info = {"scorer": name, "threshold": threshold, "from": origin}
            grids = _grids(con, f"{name}_score", threshold, subset, config.grid_size)
    if subset is not None:
        sections.append((f"Subset {subset.name}", _subset_section(subset)))
    if sweeps := _sweeps_section(paths):
        sections.append(("Sweeps", sweeps))
    if compared := compare_section(paths.root):
        sections.append(("Scaling comparisons", compared))
    derived = derived_sections(con, paths, samples_layout(con, paths), derived_names(paths.root),
                               config.grid_size)
    tar_of_shard = {s["name"]: s.get("tar") for s in run.get("shards", [])}
    every_grid = grids + [g for section in derived for g in section.grids]
    wanted = {(item.shard, item.key) for g in every_grid for item in g.items}
    thumbnails = read_thumbnails(tar_of_shard, wanted, paths.pool_storage_options())
    for g in every_grid:
        for item in g.items:
            item.thumbnail = thumbnails.get((item.shard, item.key))
    sections += [(section.title, section.html()) for section in derived]
    if grids:
        note = (
            f'<p class="note">Cut: {cut_info["scorer"]}_score = {cut_info["threshold"]:.4f} '
            f"({cut_info['from']}).</p>"
        )
        sections.append(("Images around the cut", note + "".join(H.grid(g) for g in grids)))
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    document = H.page(f"filter-pool report: {paths.root.name} ({created})", sections)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(config.out) as tmp:
        tmp.write_text(document, encoding="utf-8")
    images = document.count("<img ")
    logger.info("report %s: %d images, %d bytes", config.out, images, len(document))
    return ReportSummary(
        out=config.out,
        scorers=scorers,
        subset=config.subset,
        cut=cut_info,
        images=images,
        bytes=len(document.encode()),
        grids={g.title: len(g.items) for g in every_grid},
    )
