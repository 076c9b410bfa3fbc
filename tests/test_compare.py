"""filter-pool compare: scaling curves per subset over budgets and seeds, fitted and checked."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.compare.fit import FitError, Points, crossings, efficiency, fit_curve, law
from curate.compare.stage import CompareConfig, compare_subsets
from curate.errors import UserError
from curate.io.workspace import RunPaths
from curate.select.subset import SelectConfig, select_subset
from curate.tables.derived import write_derived_table
from tests.generators.shapes import write_shapes_eval_set

runner = CliRunner()
TRUE = {"a": 19.4, "b": 500.0, "c": 0.5, "d": 0.3}  # err(1000) ~ 0.8, err(inf) = 0.3
BUDGETS = [1000, 2000, 4000, 8000, 16000, 32000]


def _points(params: dict[str, float], budgets: list[int], seeds: int, noise: float,
            rng: np.random.Generator, shift: float = 1.0) -> Points:
    """Top-1 from the law at ``shift`` times each budget, plus Gaussian noise per seed."""
    return Points({b: list(1.0 - law(shift * b, **params) + rng.normal(0, noise, seeds))
                   for b in budgets})


@pytest.mark.parametrize("seed", [0, 1])
def test_the_fit_recovers_known_parameters(seed: int) -> None:
    fit = fit_curve("known", _points(TRUE, BUDGETS, 5, 0.005, np.random.default_rng(seed)))
    result = fit.to_dict()
    assert result["form"].startswith("a * (C + b)")
    assert result["fitted_budgets"] == BUDGETS[:-1] and result["held_out"]["budget"] == 32000
    assert result["r2"] > 0.99
    assert result["held_out"]["abs_error"] < 0.02
    for name, value in TRUE.items():
        low, high = result["intervals"][name]
        assert low <= value <= high, (name, low, value, high)
    truth_at_10x = 1.0 - law(320_000, **TRUE)
    band = result["predicted_at_10x"]["band"]
    assert band[0] <= truth_at_10x <= band[1]
    assert abs(result["predicted_at_10x"]["top1"] - truth_at_10x) < 0.05
    assert result["bootstrap"]["resamples"] == 200 and result["bootstrap"]["failed"] < 20
    # a fixed bootstrap seed: the same points give the same intervals
    again = fit_curve("known", _points(TRUE, BUDGETS, 5, 0.005, np.random.default_rng(seed)))
    assert again.to_dict()["intervals"] == result["intervals"]


def test_four_budgets_fit_three_parameters_and_fewer_are_refused() -> None:
    rng = np.random.default_rng(0)
    params = {"a": 30.0, "b": 0.0, "c": 0.5, "d": 0.3}
    fit = fit_curve("four", _points(params, [1000, 4000, 16000, 64000], 4, 0.002, rng))
    assert fit.to_dict()["form"].endswith("(b fixed at 0)") and fit.to_dict()["params"]["b"] == 0
    assert abs(fit.to_dict()["params"]["c"] - 0.5) < 0.1
    with pytest.raises(FitError, match="3 budgets .* too few"):
        fit_curve("three", _points(params, [1000, 4000, 16000], 4, 0.002, rng))


@pytest.mark.parametrize("values, message", [
    ({b: [0.25, 0.25] for b in BUDGETS}, "at every fitted budget"),
    ({**{b: [0.2, 0.3] for b in BUDGETS}, 4000: [float("nan"), 0.3]}, "not a number"),
])
def test_a_flat_or_nan_curve_is_one_line(values: dict[int, list[float]], message: str) -> None:
    with pytest.raises(FitError, match=message) as caught:
        fit_curve("bad", Points(values))
    assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)


def test_points_that_no_saturating_curve_fits_fail_cleanly() -> None:
    # accuracy falling with more samples: the law (error falling in C) fits it with R^2 <= 0
    values = {b: [0.9 - 0.1 * i, 0.9 - 0.1 * i] for i, b in enumerate(BUDGETS)}
    fit = fit_curve("falling", Points(values))
    assert fit.r2 < 0.1  # reported honestly, not hidden


def test_crossings_are_found_where_two_curves_cross() -> None:
    rng = np.random.default_rng(0)
    steep = fit_curve("steep", _points({"a": 200.0, "b": 0.0, "c": 0.8, "d": 0.2}, BUDGETS, 3,
                                       0.001, rng))
    flat = fit_curve("flat", _points({"a": 3.0, "b": 0.0, "c": 0.3, "d": 0.35}, BUDGETS, 3,
                                     0.001, rng))
    found = crossings([steep, flat], 1000, 320_000)
    truth = [c for c in np.geomspace(1000, 320_000, 2000)
             if law(c, 200, 0, 0.8, 0.2) < law(c, 3, 0, 0.3, 0.35)][0]
    assert len(found) == 1 and found[0]["leads_after"] == "steep"
    assert abs(np.log(found[0]["budget"] / truth)) < 0.15
    assert crossings([steep], 1000, 320_000) == []


def test_the_efficiency_factor_matches_a_known_shift() -> None:
    """Reinforced training is plain training with every budget worth 2.5x the samples."""
    rng = np.random.default_rng(0)
    plain = fit_curve("plain", _points(TRUE, BUDGETS, 3, 0.002, rng))
    reinforced = _points(TRUE, BUDGETS[:4], 3, 0.002, rng, shift=2.5)
    rows = efficiency(plain, reinforced)
    assert [r["budget"] for r in rows] == BUDGETS[:4]
    for row in rows:
        assert row["factor"] == pytest.approx(2.5, rel=0.12), row
        low, high = row["factor_interval"]
        assert low <= 2.5 <= high
        assert len(row["factor_per_seed"]) == 3
    unreachable = efficiency(plain, Points({1000: [0.95]}))  # above the ceiling 1 - d
    assert unreachable[0]["factor"] is None and unreachable[0]["beyond_plain_ceiling"]


# --- end to end on a tiny shapes run ------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_run(
    tmp_path_factory: pytest.TempPathFactory, make_shapes_run: Callable[[Path, int, int], Path]
) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    run = make_shapes_run(root, 2, 60)
    select_subset(SelectConfig(run=run, name="not_red", where="text NOT LIKE '%red%'"))
    return run, write_shapes_eval_set(root / "eval", per_class=2)


# 4 budgets (the fewest: b fixed at 0) x 2 seeds x 2 subsets: 16 students of a few seconds.
# Below ~256 samples seen a student can predict one class for every eval image on some CPUs
# (top-1 exactly chance at every budget: a flat curve, refused), so the fitted budgets reach 256.
TINY = ["--budgets", "64,128,256,512", "--seeds", "2", "--model", "fp-tiny-rn",
        "--batch-size", "8", "--lr", "0.003", "--workers", "0", "--no-progress"]


def _train_stamps(run: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (run / "subsets").glob("*/evaluate/*/train.json")}


def test_compare_writes_three_files_and_a_second_call_trains_nothing(
    shapes_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, eval_set = shapes_run
    args = ["compare", str(run), "--subset", "all", "--subset", "not_red", "--eval",
            str(eval_set), *TINY]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    first = json.loads(result.output)
    assert first["trained"] == 16 and first["reused_runs"] == 0 and not first["reused"]
    target = run / "compare" / "all_vs_not_red"
    assert sorted(p.name for p in target.iterdir()) == ["compare.json", "compare.parquet",
                                                         "compare.png"]
    points = pq.read_table(target / "compare.parquet").to_pylist()
    assert len(points) == 16 and {p["curve"] for p in points} == {"all", "not_red"}
    assert sorted({p["budget"] for p in points}) == [64, 128, 256, 512]
    assert all(Path(p["train_dir"], "train.json").is_file() for p in points)
    assert all(p["held_out"] == (p["budget"] == 512) for p in points)
    stored = json.loads((target / "compare.json").read_text())
    for curve in stored["curves"]:
        assert set(curve["params"]) == set(curve["intervals"]) == {"a", "b", "c", "d"}
        assert curve["predicted_at_10x"]["budget"] == 5120
        assert curve["form"].endswith("(b fixed at 0)") and curve["params"]["b"] == 0
        assert curve["held_out"]["budget"] == 512 and "r2" in curve
    assert (target / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stamps = _train_stamps(run)
    assert len(stamps) == 16

    result = runner.invoke(app, args)  # the same comparison: reused, nothing trained
    assert result.exit_code == 0 and "reused" in result.output, result.output
    assert "top-1 @5,120" in result.output
    result = runner.invoke(app, [*args, "--name", "again", "--json"])  # recomputed, not trained
    again = json.loads(result.output)
    assert again["trained"] == 0 and again["reused_runs"] == 16
    assert again["curves"] == first["curves"]
    assert _train_stamps(run) == stamps

    result = runner.invoke(app, [*args[:-1], "--seeds", "1"])
    assert result.exit_code == 2 and "seeds: was 2, now 1" in result.output, result.output

    report = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(run), "--out", str(report)])
    assert result.exit_code == 0, result.output
    page = report.read_text()
    assert "Scaling comparisons" in page and "all_vs_not_red" in page and "again" in page
    assert page.count('alt="comparison ') == 2


def test_bad_requests_are_one_line(shapes_run: tuple[Path, Path]) -> None:
    run, eval_set = shapes_run
    base = ["compare", str(run), "--eval", str(eval_set), "--no-progress"]
    for args, message in [
        (["--subset", "all", "--budgets", "16,32,64"], "3 budgets are too few"),
        (["--subset", "all", "--budgets", "16,32,x,64"], "--budgets takes"),
        (["--subset", "all", "--subset", "all", "--budgets", "1,2,3,4"], "repeat"),
        (["--subset", "nope", "--budgets", "16,32,64,128"], "subset 'nope' not found"),
        (["--subset", "all", "--subset", "red", "--budgets", "16,32,64,128", "--reinforced",
          str(run)], "one subset"),
        (["--subset", "all", "--budgets", "16,32,64,128", "--seeds", "0"], "at least 1"),
    ]:
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    with pytest.raises(UserError, match="not a valid name"):
        CompareConfig(run=run, subsets=("all",), eval_set=eval_set, budgets=(1, 2, 3, 4),
                      name="../x")
    with pytest.raises(UserError, match="not a valid name"):
        compare_subsets(CompareConfig(run=run, subsets=("../all",), eval_set=eval_set,
                                      budgets=(1, 2, 3, 4)))


def test_the_shipped_recipe_selects_and_compares(
    tmp_path: Path, make_shapes_run: Callable[[Path, int, int], Path]
) -> None:
    """pipelines/compare_subsets.toml on a tiny run: no filter against the top half by a score
    (a derived table of random scores here), 4 tiny budgets (the half subset learns nothing
    below 512 samples seen on some CPUs), one seed; a rerun trains nothing."""
    run = make_shapes_run(tmp_path, 2, 40)
    rng = np.random.default_rng(0)
    parts = []
    for part in RunPaths(run).pool_parts():
        uids = pq.read_table(part, columns=["uid"]).column("uid")
        parts.append((part.stem, pa.table({
            "uid": uids, "dfn_score": rng.random(len(uids)).astype(np.float32),
            "status": ["ok"] * len(uids), "error": pa.nulls(len(uids), pa.string())})))
    write_derived_table(run, "dfn", "test", {}, parts, {})
    eval_set = write_shapes_eval_set(tmp_path / "eval", per_class=1)
    recipe = Path(__file__).parent.parent / "pipelines" / "compare_subsets.toml"
    settings = ["run", str(recipe), "--set", f"run={run}", "--set", f"eval={eval_set}",
                "--set", "fraction=0.5", "--set", "budgets=[64, 256, 512, 1024]",
                "--set", "seeds=1", "--set", "batch_size=8", "--set", "lr=0.003",
                "--set", "workers=0", "--no-progress"]
    result = runner.invoke(app, [*settings, "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads((run / "compare" / "subsets" / "compare.json").read_text())
    assert [c["label"] for c in record["curves"]] == ["no_filter", "dfn_top"]
    assert record["points"] == 8 and record["settings"]["seeds"] == 1
    assert (run / "compare" / "subsets" / "compare.png").is_file()
    stamps = _train_stamps(run)
    assert len(stamps) == 8
    result = runner.invoke(app, settings)
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.strip().splitlines()[:-1]] == ["done"] * 3
    assert _train_stamps(run) == stamps
