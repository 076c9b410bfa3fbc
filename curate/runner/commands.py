"""Which ``filter-pool`` commands run sharded stages, and so start local Dask workers.

Each stage package declares its sharded stage and the commands that run it in its (light)
``__init__.py``; the launcher reads them here before it loads the CLI, without torch or Dask.
"""

from __future__ import annotations

import importlib
from pathlib import Path

_STAGES: dict[str, frozenset[str]] = {}  # stage -> the commands that run it


def declare_sharded_stage(stage: str, commands: tuple[str, ...]) -> None:
    """Record that ``commands`` run the sharded stage ``stage`` (on executor workers)."""
    _STAGES[stage] = _STAGES.get(stage, frozenset()) | frozenset(commands)


def _import_stage_packages() -> None:
    """Import every ``curate`` package that holds a ``stage.py`` (its ``__init__`` only)."""
    import curate

    root = Path(curate.__file__).parent
    for stage_file in sorted(root.glob("*/stage.py")):
        importlib.import_module(f"curate.{stage_file.parent.name}")


def sharded_commands() -> frozenset[str]:
    """The commands that run at least one sharded stage."""
    _import_stage_packages()
    return frozenset().union(*_STAGES.values())
