"""Exact class-token image encoding for open_clip ViTs.

A ViT with ``tok`` pooling reads only the class token of its last block, so that block is
computed for the class token alone (see ``pooled_block``); the embeddings equal
``model.encode_image`` up to float rounding. Other image towers (attentional pooling, average
pooling, custom blocks, timm and ResNet towers) use ``encode_image`` itself and say why in
the log.
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn

from curate.score.pooled_block import last_block_at, pooled_block_supported

logger = logging.getLogger(__name__)


class ImageEncoder(Protocol):
    """Preprocessed images [B, 3, H, W] in, unit-norm embeddings [B, D] out."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class PlainImageEncoder:
    """open_clip's own ``encode_image``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images, normalize=True)


class ClassTokenImageEncoder:
    """``encode_image`` of a ``tok``-pooled ViT with the last block run for the class token."""

    def __init__(self, visual: VisionTransformer) -> None:
        self.visual = visual
        self.blocks = list(visual.transformer.resblocks)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        x = visual._embeds(images)
        for block in self.blocks[:-1]:
            x = block(x)
        positions = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        pooled = visual.ln_post(last_block_at(self.blocks[-1], x, positions, causal=False))
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return F.normalize(pooled, dim=-1)


def _class_token_tower(model: nn.Module) -> tuple[VisionTransformer | None, str]:
    """The model's ViT when class-token encoding is exact for it, else None and why not."""
    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        return None, f"image tower {type(visual).__name__} is not open_clip's VisionTransformer"
    if visual.attn_pool is not None:
        return None, "image tower pools with attention"
    if visual.pool_type != "tok":
        return None, f"image pooling {visual.pool_type!r} reads every token"
    if not visual.transformer.batch_first or not hasattr(visual, "_embeds"):
        return None, "this open_clip version's VisionTransformer has another layout"
    if visual.training:
        return None, "image tower is in training mode (patch dropout)"
    supported, reason = pooled_block_supported(visual.transformer.resblocks[-1])
    if not supported:
        return None, reason
    return visual, "class-token ViT"


def make_image_encoder(model: nn.Module, exact_shortcuts: bool = True) -> ImageEncoder:
    """The fastest exact image encoder for ``model``; logs when it falls back."""
    if not exact_shortcuts:
        return PlainImageEncoder(model)
    visual, reason = _class_token_tower(model)
    if visual is None:
        logger.info("image encoding runs open_clip's encode_image: %s", reason)
        return PlainImageEncoder(model)
    logger.debug("last image block computed for the class token only (%s)", reason)
    return ClassTokenImageEncoder(visual)
