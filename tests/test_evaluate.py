"""filter-pool evaluate: a fresh small CLIP per seed on a subset, a fixed budget of samples."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.errors import UserError
from curate.evaluate.stage import EvaluateConfig, evaluate_subset
from tests.generators.shapes import write_shapes_eval_set

runner = CliRunner()


@pytest.fixture(scope="module")
def shapes_run(
    tmp_path_factory: pytest.TempPathFactory, make_shapes_run: Callable[[Path, int, int], Path]
) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    run = make_shapes_run(root, 2, 100)
    return run, write_shapes_eval_set(root / "eval", per_class=2)


def _config(run: Path, eval_set: Path, subset: str, **overrides) -> EvaluateConfig:
    settings = dict(
        run=run,
        subset=subset,
        eval_set=eval_set,
        samples_seen=64,
        seeds=(0, 1),
        model="fp-tiny-rn",
        batch_size=8,
        holdout=8,
        workers=0,
        progress=False,
    )
    return EvaluateConfig(**{**settings, **overrides})


def test_same_budget_whatever_the_subset_size(shapes_run: tuple[Path, Path]) -> None:
    run, eval_set = shapes_run
    big = evaluate_subset(_config(run, eval_set, "all"))
    small = evaluate_subset(_config(run, eval_set, "red"))
    for evaluation in (big, small):
        assert [r["seed"] for r in evaluation.runs] == [0, 1]
        assert all(r["samples_seen"] == 64 for r in evaluation.runs)
        assert all(0.0 <= r["zero_shot_top1"] <= 1.0 for r in evaluation.runs)
    assert small.runs[0]["subset_pairs"] < big.runs[0]["subset_pairs"]
    # a student is validated once, after its budget (8 steps), not along the way
    record = json.loads((Path(big.runs[0]["train_dir"]) / "train.json").read_text())
    assert [v["step"] for v in record["validations"]] == [8]
    assert small.runs[0]["epochs_seen"] > big.runs[0]["epochs_seen"]  # a small subset repeats
    assert big.runs[0]["zero_shot_top1"] != big.runs[1]["zero_shot_top1"] or (
        big.runs[0]["loss_last"] != big.runs[1]["loss_last"]
    )  # seeds differ
    stored = json.loads((run / "subsets" / "all" / "evaluation.json").read_text())
    entry = stored["evaluations"][0]
    assert entry["samples_seen"] == 64 and len(entry["runs"]) == 2
    assert entry["summary"]["zero_shot_top1"]["min"] <= entry["summary"]["zero_shot_top1"]["mean"]


def test_finished_seeds_are_reused_and_results_replaced_not_duplicated(
    shapes_run: tuple[Path, Path],
) -> None:
    run, eval_set = shapes_run
    first = evaluate_subset(_config(run, eval_set, "red", seeds=(3,)))
    train_json = Path(first.runs[0]["train_dir"]) / "train.json"
    stamp = train_json.stat().st_mtime_ns
    again = evaluate_subset(_config(run, eval_set, "red", seeds=(3,)))
    assert train_json.stat().st_mtime_ns == stamp  # not retrained
    assert again.runs == first.runs
    stored = json.loads((run / "subsets" / "red" / "evaluation.json").read_text())
    assert sum(e.get("samples_seen") == 64 for e in stored["evaluations"]) == 1


def test_cli_json_and_bad_input(shapes_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, eval_set = shapes_run
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(run),
            "--subset",
            "red",
            "--eval",
            str(eval_set),
            "--samples-seen",
            "64",
            "--batch-size",
            "8",
            "--seed",
            "5",
            "--workers",
            "0",
            "--no-progress",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["runs"][0]["seed"] == 5 and payload["samples_seen"] == 64
    for args, message in [
        (["--subset", "nope", "--eval", str(eval_set)], "subset 'nope' not found"),
        (["--subset", "red", "--eval", str(tmp_path / "none")], "none"),
        (["--subset", "red", "--eval", str(eval_set), "--samples-seen", "0"], "must be positive"),
        (["--subset", "red", "--eval", str(eval_set), "--seed", "1", "--seed", "1"], "repeat"),
    ]:
        result = runner.invoke(app, ["evaluate", str(run), *args, "--no-progress"])
        assert result.exit_code == 2 and message in result.output, result.output
    with pytest.raises(UserError):
        EvaluateConfig(run=run, subset="red", eval_set=eval_set, seeds=())
