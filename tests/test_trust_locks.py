"""Trust, concurrency: one writer per output. A second writer of the same output stops at once
with a message naming the holder; different outputs of one run go together; ingest cannot
replace a run that another command is writing; locks vanish with their holder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from typer.testing import CliRunner

from curate.cli import app
from curate.ingest.stage import IngestConfig, ingest_pool
from tests.generators.synthetic import SyntheticPool

runner = CliRunner()
HOLDER = """
import sys
from pathlib import Path
from curate.io.lock import beside, hold, inside, run_output
run, kind, scope = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
lock = run_output(run, scope, "x") if kind == "output" else hold(beside(run), "x")
with lock:
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


@contextmanager
def held(run: Path, kind: str, scope: str = "") -> Iterator[int]:
    """Another process holding a lock as a command would; yields its pid."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(run), kind, scope],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    try:
        assert process.stdout.readline().strip() == "ready"
        yield process.pid
    finally:
        process.stdin.close()
        process.wait(timeout=30)


def _score(run: Path, name: str):
    return runner.invoke(app, ["score", str(run), "--model", "fp-tiny-vit", "--random-init",
                               "--workers", "0", "--name", name, "--no-progress"])


def test_one_writer_per_scorer_and_scorers_go_together(tmp_path: Path,
                                                        pool: SyntheticPool) -> None:
    run = tmp_path / "run"
    ingest_pool(IngestConfig(pool=pool.root, run=run))
    with held(run, "output", "score-dfn") as pid:
        busy = _score(run, "dfn")
        assert busy.exit_code == 2 and busy.stderr.count("\n") == 1
        assert f"pid {pid}" in busy.stderr and "scorer 'dfn'" in busy.stderr
        assert not (run / "scores" / "dfn").exists()
        assert _score(run, "other").exit_code == 0  # another scorer of the same run
    assert _score(run, "dfn").exit_code == 0  # the holder is gone: its lock with it
    assert not (run / ".locks").exists() and not (tmp_path / ".run.lock").exists()


def test_ingest_cannot_replace_a_run_being_written(tmp_path: Path, pool: SyntheticPool) -> None:
    run = tmp_path / "run"
    ingest_pool(IngestConfig(pool=pool.root, run=run))
    with held(run, "output", "subset-top"):
        result = runner.invoke(app, ["ingest", str(pool.root), "--run", str(run),
                                     "--overwrite"])
        assert result.exit_code == 2 and "is being written by" in result.stderr
        assert (run / "run.json").is_file()
    with held(run, "run") as pid:  # an ingest holds the run: select waits its turn
        result = runner.invoke(app, ["select", str(run), "--out", "all"])
        assert result.exit_code == 2 and f"pid {pid}" in result.stderr
        assert not (run / "subsets" / "all").exists()
    assert runner.invoke(app, ["select", str(run), "--out", "all"]).exit_code == 0


def test_a_killed_holder_leaves_no_lock(tmp_path: Path, pool: SyntheticPool) -> None:
    run = tmp_path / "run"
    ingest_pool(IngestConfig(pool=pool.root, run=run))
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(run), "output", "subset-s"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert process.stdout.readline().strip() == "ready"
    process.kill()
    process.wait(timeout=30)
    assert runner.invoke(app, ["select", str(run), "--out", "s"]).exit_code == 0
