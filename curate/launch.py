"""The ``filter-pool`` entry point: starts the local workers' forkserver before the CLI loads.

A command that starts a local Dask cluster (one that runs a sharded stage, as the stage
packages declare in ``curate.runner.commands``) first starts the forkserver its workers fork
from (``curate.executor.forkserver``), which imports torch and open_clip (about 5 s on one
core) on another core while the command loads and checks its input: the workers are ready
when the command needs them instead of 5-7 s later.
"""

from __future__ import annotations

import sys

from curate.executor.base import available_cores  # light: no Dask, no torch
from curate.runner.commands import sharded_commands  # light: reads the stage packages' inits


def _option_value(args: list[str], name: str) -> str | None:
    """The value given to ``--name VALUE`` or ``--name=VALUE`` (the last one), else None."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def starts_local_cluster(args: list[str], cores: int | None = None) -> bool:
    """True when ``filter-pool ARGS`` will start local Dask workers (by its command and its
    ``--workers`` and ``--scheduler`` options) on a machine with more than one core."""
    command = next((a for a in args if not a.startswith("-")), None)
    if command not in sharded_commands() or "--help" in args:
        return False
    if _option_value(args, "--scheduler") is not None or _option_value(args, "--workers") == "0":
        return False
    return (cores if cores is not None else available_cores()) > 1


def main() -> None:
    """Run the CLI; start the workers' forkserver first when the command needs workers."""
    if starts_local_cluster(sys.argv[1:]):
        from curate.executor.forkserver import start_forkserver

        start_forkserver()
    from curate.cli import app

    app()
