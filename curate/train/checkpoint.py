"""Resume state of a training run: saved atomically, loaded only for the same configuration.

``DIR/checkpoints/last.pt`` holds the model and optimizer state, the gradient scaler, the step,
samples seen, RNG states, the loss history so far and the run's identity (the settings that
must not change across a resume).
"""

from __future__ import annotations

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
    """Every RNG the loop touches: torch (CPU and CUDA), NumPy and Python."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: Path, state: dict[str, Any]) -> Path:
    """Write the resume state atomically (temporary file, then rename)."""
    path = checkpoint_path(out)
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
        # Our own file: it holds RNG states (NumPy arrays, Python tuples), not only tensors.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged file: torch raises several kinds
        raise UserError(f"{path}: cannot read the checkpoint ({exc}); pass --overwrite") from exc


def identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two run identities (empty when they match)."""
    keys = sorted(set(saved) | set(current))
    return [
        f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]
