"""Resume state of a training run: saved atomically, loaded only for the same configuration.

``DIR/checkpoints/last.pt`` holds the model and optimizer state, the gradient scaler, the step,
samples seen, RNG states, the loss history so far and the run's identity (the settings that
must not change across a resume).

A run folder may come from someone else, so the file holds tensors and plain values only (RNG
states as tensors, the identity as JSON text) and is loaded with ``weights_only=True``: nothing
in it is unpickled.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from curate.errors import UserError
from curate.io.workspace import atomic_path

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"


def checkpoint_path(out: Path) -> Path:
    return Path(out) / CHECKPOINT_DIR / LAST


def rng_state() -> dict[str, Any]:
    """Every RNG the loop touches, torch (CPU and CUDA), NumPy and Python, as tensors and
    plain values (loadable with ``weights_only=True``)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "position": int(position), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32),
                         numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["internal"].tolist()),
                     python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: Path, state: dict[str, Any]) -> Path:
    """Write the resume state atomically (temporary file, then rename)."""
    path = checkpoint_path(out)
    state = {**state, "identity": json.dumps(state["identity"], sort_keys=True)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    logger.info("checkpoint at step %d -> %s", state["step"], path)
    return path


def load_checkpoint(out: Path) -> dict[str, Any] | None:
    """The resume state in ``out``, or None when there is none."""
    path = checkpoint_path(out)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state["identity"] = json.loads(state["identity"])
        return state
    except Exception as exc:  # damaged, foreign or pickled objects: torch raises several kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot read the checkpoint ({first}); pass --overwrite") from exc


def identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two run identities (empty when they match)."""
    current = json.loads(json.dumps(current, sort_keys=True))  # as saved: tuples become lists
    keys = sorted(set(saved) | set(current))
    return [
        f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]
