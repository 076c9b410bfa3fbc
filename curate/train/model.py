"""The model to train: an open_clip config from scratch, or an existing checkpoint (``--init``).

``--init`` takes one SPEC in the project's vocabulary (``ARCH:TAG``, ``ARCH:/path/ckpt.pt``,
``hf-hub:org/name`` or a model directory) and is loaded with :func:`curate.models.load_model`,
so QuickGELU is pinned the same way scoring pins it. An init whose architecture differs from
``--model`` is refused, naming the differing config entries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from curate.io.storage import is_url
from curate.models import LoadedModel, ModelSpec, load_model, parse_model_spec
from curate.models.spec import HF_HUB_PREFIX, ModelError, resolve_model_spec

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32"  # the DFN paper's filter architecture


@dataclass
class TrainableModel:
    """A model in train mode with both transforms, its tokenizer and the config to save."""

    loaded: LoadedModel
    train_transform: Callable[[Image.Image], torch.Tensor]
    model_cfg: dict[str, Any]
    architecture: str
    init: str | None

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model


def _config_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        if key == "quick_gelu":
            continue
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            out += _config_differences(left, right, f"{prefix}{key}.")
        elif left != right:
            out.append(f"{prefix}{key} {left!r} vs {right!r}")
    return out


def _architecture_config(name: str) -> dict[str, Any]:
    resolved = resolve_model_spec(ModelSpec(name, random_init=True))  # unknown names: clear error
    config = open_clip.get_model_config(resolved.open_clip_name)
    if config is None:
        raise ModelError(f"cannot read the open_clip config of {name}")
    return config


def _init_spec(text: str) -> ModelSpec:
    spec = parse_model_spec(text)
    is_source = spec.model.startswith(HF_HUB_PREFIX) or is_url(spec.model) or \
        Path(spec.model).is_dir()
    if not is_source and not spec.pretrained:
        raise ModelError(
            f"--init {text!r} names no weights: use ARCH:TAG, ARCH:/path/ckpt.pt, hf-hub:org/name "
            "or a model directory (use --model to train from scratch)"
        )
    return spec


def build_model(model: str | None, init: str | None, device: torch.device) -> TrainableModel:
    """Create the model to train (seed the RNG before calling for a reproducible init)."""
    if init is None:
        architecture = model or DEFAULT_MODEL
        spec = ModelSpec(architecture, random_init=True)
        model_cfg = _architecture_config(architecture)
    else:
        spec = _init_spec(init)
        resolved = resolve_model_spec(spec)
        try:
            model_cfg = open_clip.get_model_config(resolved.open_clip_name)
        except Exception as exc:  # hub config not cached, unreadable file
            raise ModelError(f"cannot read the config of --init {init}: {exc}") from exc
        if model_cfg is None:
            raise ModelError(f"cannot read the open_clip config of --init {init}")
        architecture = model or spec.model
        if model is not None:
            differences = _config_differences(_architecture_config(model), model_cfg)
            if differences:
                raise ModelError(
                    f"--init {init} does not match --model {model}: "
                    + "; ".join(differences[:4])
                    + (f" (+{len(differences) - 4} more)" if len(differences) > 4 else "")
                )
    loaded = load_model(spec, device=device)
    model_cfg = dict(model_cfg)
    if loaded.quick_gelu:
        model_cfg["quick_gelu"] = True
    else:
        model_cfg.pop("quick_gelu", None)
    preprocess_cfg = PreprocessCfg(**loaded.model.visual.preprocess_cfg)
    train_transform = image_transform_v2(preprocess_cfg, is_train=True)
    loaded.model.train()
    logger.info(
        "training %s (init: %s, quick_gelu=%s)", architecture, init or "random", loaded.quick_gelu
    )
    return TrainableModel(loaded, train_transform, model_cfg, architecture, init)
