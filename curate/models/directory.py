"""Model directories: open_clip config plus weights, the layout of an hf-hub repository.

``filter-pool train-dfn`` writes one, ``filter-pool score --model DIR`` loads one, and
``open_clip.create_model('local-dir:DIR')`` or an hf-hub upload read the same files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from open_clip.push_to_hf_hub import save_config_for_hf

from curate.errors import UserError
from curate.io.workspace import atomic_path, staged_directory

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


def save_model_directory(
    model: torch.nn.Module, model_cfg: dict[str, Any], out: Path, *, overwrite: bool = False
) -> Path:
    """Write ``out/open_clip_config.json`` and ``out/open_clip_model.safetensors`` atomically.

    ``model_cfg`` is the open_clip model config the weights belong to; its ``quick_gelu``
    entry is what loading pins.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass overwrite to replace it")
    with staged_directory(out) as staging:
        write_model_files(model, model_cfg, staging)
    return out


def write_model_files(model: torch.nn.Module, model_cfg: dict[str, Any], directory: Path) -> None:
    """Write the config and weights into an existing ``directory``, each file atomically
    (``train-dfn`` writes them beside its checkpoints and ``train.json``)."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in
             model.state_dict().items()}
    with atomic_path(Path(directory) / WEIGHTS_NAME) as tmp:
        safetensors.torch.save_file(state, str(tmp))
        os.chmod(tmp, 0o644)  # safetensors creates 0600; weights are meant to be shared
    with atomic_path(Path(directory) / CONFIG_NAME) as tmp:
        save_config_for_hf(model, tmp, model_config=model_cfg)
