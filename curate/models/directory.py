"""Model directories: open_clip config plus weights, the layout of an hf-hub repository.

``filter-pool train-dfn`` writes one, ``filter-pool score --model DIR`` loads one, and
``open_clip.create_model('local-dir:DIR')`` or an hf-hub upload read the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from open_clip.push_to_hf_hub import save_config_for_hf

from curate.errors import UserError
from curate.workspace import staged_directory

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
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in
                 model.state_dict().items()}
        safetensors.torch.save_file(state, str(staging / WEIGHTS_NAME))
        save_config_for_hf(model, staging / CONFIG_NAME, model_config=model_cfg)
    return out
