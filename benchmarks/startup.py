"""Startup of the table commands: how long before a command starts its work, and the whole
command on a tiny run.

For each table command (query, sweep, select, export, report, filters) this prints, as the
median of ``--repeat`` fresh processes:

* ``python``: the bare interpreter (``python -c pass``), the floor under every command;
* ``ready``: interpreter start plus importing what the command imports before it works (the
  launcher, the CLI and the command's stage module);
* ``command``: ``filter-pool CMD ...`` end to end on a 300-row DataComp metadata run (its own
  work on so few rows is a few milliseconds, so this is startup in practice).

The issue's limit is 0.5 s for ``ready``. Usage::

    .venv/bin/python benchmarks/startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _paths  # noqa: F401  (repository root on sys.path)

from tests.generators.datacomp import write_datacomp_metadata

ROOT = Path(__file__).resolve().parent.parent
CLI = [str(Path(sys.executable).parent / "filter-pool")]  # the installed entry point
MODULES = {
    "query": "curate.tables.views",
    "sweep": "curate.select.sweep",
    "select": "curate.select.subset",
    "export": "curate.export.stage",
    "report": "curate.report.build",
    "filters": "curate.filters",
}


def _median_wall(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _commands(run: Path, out: Path) -> dict[str, list[str]]:
    return {
        "query": ["query", str(run), "SELECT count(*) FROM samples"],
        "sweep": ["sweep", str(run), "--by", "clip_l14", "--fractions", "0.3", "--stats-sample",
                  "0", "--overwrite"],
        "select": ["select", str(run), "--out", "top", "--by", "clip_l14", "--fraction", "0.3",
                   "--uids-only", "--overwrite"],
        "export": ["export", str(run), "--subset", "missing", "--out", str(out / "export")],
        "report": ["report", str(run), "--out", str(out / "report.html"), "--overwrite"],
        "filters": ["filters"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        work = Path(tmp)
        write_datacomp_metadata(work / "meta", num_files=3, rows_per_file=100)
        run = work / "run"
        subprocess.run([*CLI, "ingest", str(work / "meta"), "--run", str(run)], check=True,
                       capture_output=True, cwd=ROOT)
        bare = _median_wall([sys.executable, "-c", "pass"], args.repeat)
        print(f"python -c pass: {bare:.3f} s (median of {args.repeat})")
        print(f"{'command':<8} {'ready s':>8} {'command s':>10}  (limit 0.5 s for ready)")
        for name, argv in _commands(run, work).items():
            ready = _median_wall([sys.executable, "-c", "import curate.launch, curate.cli, "
                                  f"{MODULES[name]}"], args.repeat)
            # export of a missing subset exits 2 after its checks: startup plus one lookup
            command = CLI + argv
            times = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                subprocess.run(command, capture_output=True, cwd=ROOT)
                times.append(time.perf_counter() - started)
            print(f"{name:<8} {ready:>8.3f} {statistics.median(times):>10.3f}")


if __name__ == "__main__":
    main()
