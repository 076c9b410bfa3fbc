"""The package layout keeps its shape: no import cycle between packages of ``curate``, and
``curate.io`` (readers and writers) never imports a generator, a stage or a test helper."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import curate

PACKAGE = Path(curate.__file__).parent
GENERATORS = ("curate.toyworld", "tests")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions (absolute names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _unit(module: str) -> str | None:
    """The layout unit a ``curate`` module belongs to: ``curate.<top>``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "curate" and len(parts) > 1 else None


def _exists(unit: str) -> bool:
    top = unit.split(".")[1]
    return (PACKAGE / top).is_dir() or (PACKAGE / f"{top}.py").is_file()


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(("curate", *path.relative_to(PACKAGE).with_suffix("").parts))
        source = _unit(module)
        if source is None:
            continue
        for name in _imports(path):
            target = _unit(name)
            if target and target != source and _exists(target):
                edges[source].add(target)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as the list of its nodes, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_package_imports_another_in_a_cycle() -> None:
    edges = _graph()
    assert len(edges) > 10
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_cycle_check_can_fire() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_io_imports_no_generator_stage_or_test_helper() -> None:
    allowed = {"curate.io", "curate.errors"}
    offenders = []
    for path in (PACKAGE / "io").rglob("*.py"):
        for name in _imports(path):
            if name.startswith(GENERATORS) or (
                name.startswith("curate.") and _unit(name) not in allowed
            ):
                offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_the_launcher_and_cli_load_no_heavy_library() -> None:
    """`filter-pool` starts in a fraction of a second: the launcher (which reads every stage
    package's ``__init__``) and the CLI load neither DuckDB, pyarrow, Pillow, torch, faiss nor
    Dask; each command imports what it needs (benchmarks/startup.py measures the time)."""
    import subprocess
    import sys

    heavy = ["duckdb", "pyarrow", "PIL", "torch", "faiss", "dask", "distributed", "open_clip",
             "tqdm", "numpy"]
    code = ("import sys; import curate.launch; from curate.runner.commands import "
            "sharded_commands; sharded_commands(); import curate.cli; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True).stdout.strip()
    assert loaded == "[]"
