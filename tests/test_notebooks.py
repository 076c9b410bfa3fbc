"""The notebooks run top to bottom against a small generated run; git holds them stripped."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from curate.executor import ExecutorConfig
from curate.models import ModelSpec
from curate.score.stage import ScoreConfig, score_run

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def notebook_run(tmp_path_factory: pytest.TempPathFactory, pool, tiny_checkpoint: Path) -> Path:
    from curate.ingest.stage import IngestConfig, ingest_pool

    run = tmp_path_factory.mktemp("notebook") / "run"
    ingest_pool(IngestConfig(pool=pool.root, run=run))
    score_run(ScoreConfig(run=run, model=ModelSpec("fp-tiny-vit", str(tiny_checkpoint)),
                          executor=ExecutorConfig(workers=0), batch_size=8, progress=False))
    return run


def test_notebooks_are_stored_without_outputs() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"explore_scores.ipynb", "threshold_sweep.ipynb"}
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name != "compare_filters.ipynb"],
                         ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path, notebook_run: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILTER_POOL_RUN", str(notebook_run))
    monkeypatch.setenv("FILTER_POOL_BASIC", "basic:min_side=32")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    images = sum("image/png" in output.get("data", {}) for cell in notebook.cells
                 if cell.cell_type == "code" for output in cell.outputs)
    assert images >= 1, f"{path.name} drew no plot"
    assert os.environ["FILTER_POOL_RUN"] == str(notebook_run)
