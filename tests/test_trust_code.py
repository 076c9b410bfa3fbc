"""Trust, code in data: nothing loaded from a run, an output folder or a pool is unpickled."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import curate
from curate.errors import UserError
from curate.io.uids import read_uid_file
from curate.train.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)

MARKER = "pickle-ran"


class _Payload:
    """Unpickling this writes a file: proof that code in data ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, MARKER))


def test_resume_state_round_trips_without_pickle(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.normal(), torch.rand(1)  # a cached gaussian, mid-stream states
    state = rng_state()
    expected = (random.random(), np.random.normal(), torch.rand(3))
    save_checkpoint(tmp_path, {"step": 7, "identity": {"lr": 0.1, "shape": (1, 2)},
                               "rng": state, "history": [{"step": 1, "loss": 2.5}]})
    torch.manual_seed(99)
    loaded = load_checkpoint(tmp_path)
    assert loaded["step"] == 7 and loaded["identity"] == {"lr": 0.1, "shape": [1, 2]}
    restore_rng(loaded["rng"])
    got = (random.random(), np.random.normal(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_a_checkpoint_holding_a_pickled_object_is_refused_unrun(tmp_path: Path) -> None:
    target = tmp_path / "ran.txt"
    path = checkpoint_path(tmp_path)
    path.parent.mkdir(parents=True)
    torch.save({"step": 1, "identity": "{}", "payload": _Payload(target)}, path)
    with pytest.raises(UserError, match="cannot read the checkpoint"):
        load_checkpoint(tmp_path)
    assert not target.exists()


def test_a_uid_file_holding_objects_is_refused_unrun(tmp_path: Path) -> None:
    target = tmp_path / "ran.txt"
    path = tmp_path / "uids.npy"
    np.save(path, np.array([_Payload(target)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="uids.npy: not a .npy uid file"):
        read_uid_file(path)
    assert not target.exists()


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == name]


def test_every_load_in_the_package_refuses_pickles() -> None:
    """Every torch.load says weights_only=True and every np.load allow_pickle=False; nothing
    imports pickle to load with it."""
    package = Path(curate.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for call in _calls(tree, "load"):
            owner = getattr(call.func.value, "id", None)
            flags = {k.arg: getattr(k.value, "value", None) for k in call.keywords}
            if owner == "torch" and flags.get("weights_only") is not True:
                offenders.append(f"{path.name}:{call.lineno} torch.load")
            if owner == "np" and flags.get("allow_pickle") is not False:
                offenders.append(f"{path.name}:{call.lineno} np.load")
        for call in _calls(tree, "loads") + _calls(tree, "load"):
            if getattr(call.func.value, "id", None) in {"pickle", "cloudpickle", "joblib"}:
                offenders.append(f"{path.name}:{call.lineno} {call.func.value.id}")
    assert offenders == []
