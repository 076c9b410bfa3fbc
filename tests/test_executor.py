"""Local Dask workers fork from a forkserver that has imported torch and open_clip; the
``filter-pool`` launcher starts that forkserver only for commands that start local workers."""

from __future__ import annotations

import os

import pytest

from curate.executor import ExecutorConfig, make_executor
from curate.launch import starts_local_cluster


def _worker_facts(task: int, progress: object) -> dict[str, object]:
    import sys

    return {
        "preloaded": {"torch", "open_clip", "curate.score.scorer"} <= set(sys.modules),
        "parent": os.getppid(),
        "pid": os.getpid(),
    }


def test_local_workers_are_forked_with_torch_and_open_clip_loaded() -> None:
    executor = make_executor(ExecutorConfig(workers=2))
    try:
        facts = [outcome for _, outcome in executor.map(_worker_facts, [0, 1], lambda n: None)]
    finally:
        executor.close()
    assert all(f["preloaded"] for f in facts)  # imported before the first task ran
    # forked by the forkserver, not spawned by the worker's nanny in this process
    assert all(f["parent"] != os.getpid() for f in facts)
    assert len({f["parent"] for f in facts}) == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["score", "RUN", "--model", "ViT-B-32"], True),
        (["-v", "score", "RUN"], True),
        (["score", "RUN", "--workers", "2"], True),
        (["score", "RUN", "--workers", "0"], False),
        (["score", "RUN", "--workers=0"], False),
        (["score", "RUN", "--scheduler", "tcp://127.0.0.1:8786"], False),
        (["score", "--help"], False),
        (["demo", "--out", "x"], True),
        (["reinforce", "SHARDS", "--out", "x"], True),
        (["reinforce", "SHARDS", "--workers", "0"], False),
        (["run", "pipelines/demo.toml"], True),
        (["select", "RUN", "--out", "top"], False),
        ([], False),
    ],
)
def test_launcher_starts_the_forkserver_only_for_local_workers(
    args: list[str], expected: bool
) -> None:
    assert starts_local_cluster(args, cores=2) is expected
    assert starts_local_cluster(args, cores=1) is False


def test_launcher_decides_without_torch_dask_or_the_cli() -> None:
    """The commands that need workers come from the stages' declarations, read light."""
    import subprocess
    import sys

    code = (
        "import sys; from curate.launch import starts_local_cluster as s; "
        "assert s(['score', 'R'], cores=2) and s(['reinforce', 'S'], cores=2); "
        "assert not s(['select', 'R'], cores=2); "
        "heavy = {'torch', 'dask', 'distributed', 'open_clip', 'curate.cli'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
