"""Exact short-text encoding for open_clip's causal text towers.

open_clip pads every caption to the context length (77 tokens). In a causal text transformer
the hidden state at position ``i`` depends only on tokens ``0..i``, and the embedding is read
at the end-of-text token, so everything after the longest caption's end-of-text token is
wasted work. ``ExactShortTextEncoder`` cuts the token embedding, positional embedding and
causal mask to that length and pools where open_clip pools, and its last block runs only at
the pooled position (``pooled_block``); the embeddings equal
``model.encode_text`` up to float rounding. Towers where this is not exact (bidirectional
attention, an appended class token, ``last`` pooling, Hugging Face towers) use
``PaddedTextEncoder``, which is ``encode_text`` itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from curate.score.pooled_block import last_block_at, pooled_block_supported

logger = logging.getLogger(__name__)

EXACT_POOL_TYPES = ("argmax", "eos", "first")


class TextEncoder(Protocol):
    """Token ids [B, context] in, unit-norm float32 embeddings [B, D] out."""

    exact_short: bool

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        """How many leading positions each caption needs (for batching by length)."""
        ...


@dataclass
class _CausalTower:
    """The pieces of an open_clip causal text tower, wherever the model keeps them."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: nn.Module | torch.Tensor | None
    attn_mask: torch.Tensor
    pool_type: str
    eos_id: int | None


def _causal_tower(model: nn.Module) -> tuple[_CausalTower | None, str]:
    """The model's text tower when short encoding is exact for it, else None and why not."""
    text = getattr(model, "text", None)
    if text is None:  # open_clip.CLIP keeps the tower's parts on the model itself
        owner = model
        pool_type = getattr(model, "text_pool_type", None)
        eos_id = getattr(model, "text_eos_id", None)
    else:  # CustomTextCLIP: a TextTransformer, or a Hugging Face tower
        owner = text
        pool_type = getattr(text, "pool_type", None)
        eos_id = getattr(text, "eos_id", None)
        if not hasattr(text, "token_embedding"):
            return None, f"text tower {type(text).__name__} is not open_clip's TextTransformer"
        if getattr(text, "cls_emb", None) is not None:
            return None, "text tower appends a class token after the padding"
        if getattr(text, "use_pad_mask", False):
            return None, "text tower masks padding (bidirectional)"
    attn_mask = getattr(owner, "attn_mask", None)
    if attn_mask is None:
        return None, "text tower has no causal mask (bidirectional attention)"
    if pool_type not in EXACT_POOL_TYPES:
        return None, f"text pooling {pool_type!r} reads a padded position"
    tower = _CausalTower(
        token_embedding=owner.token_embedding,
        positional_embedding=owner.positional_embedding,
        transformer=owner.transformer,
        ln_final=owner.ln_final,
        text_projection=owner.text_projection,
        attn_mask=attn_mask,
        pool_type=pool_type,
        eos_id=eos_id,
    )
    return tower, "causal text tower"


class PaddedTextEncoder:
    """open_clip's own ``encode_text`` over the full context length."""

    exact_short = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens, normalize=True).float()

    def lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long)


class ExactShortTextEncoder:
    """``encode_text`` computed only up to the batch's last pooled position."""

    exact_short = True

    def __init__(self, tower: _CausalTower) -> None:
        self.tower = tower
        transformer = tower.transformer
        self.pooled_last_block = (
            getattr(transformer, "batch_first", False)
            and pooled_block_supported(transformer.resblocks[-1])[0]
        )

    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """The position open_clip pools each caption at (as ``text_global_pool`` does)."""
        if self.tower.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        if self.tower.pool_type == "eos":
            return (tokens == self.tower.eos_id).int().argmax(dim=-1)
        return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)

    def lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pool_index(tokens) + 1

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        tower = self.tower
        pool_index = self.pool_index(tokens)
        length = int(pool_index.max()) + 1
        tokens = tokens[:, :length]
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(tokens).to(cast_dtype)
        x = x + tower.positional_embedding[:length].to(cast_dtype)
        mask = tower.attn_mask[:length, :length]
        if self.pooled_last_block:
            blocks = tower.transformer.resblocks
            for block in blocks[:-1]:
                x = block(x, attn_mask=mask)
            x = tower.ln_final(last_block_at(blocks[-1], x, pool_index, causal=True))
        else:
            x = tower.ln_final(tower.transformer(x, attn_mask=mask))
            x = x[torch.arange(x.shape[0], device=x.device), pool_index]
        projection = tower.text_projection
        if isinstance(projection, nn.Linear):
            x = projection(x)
        elif projection is not None:
            x = x @ projection
        return F.normalize(x, dim=-1).float()


def make_text_encoder(model: nn.Module, exact_short: bool = True) -> TextEncoder:
    """The fastest exact text encoder for ``model``; logs when it falls back to padding."""
    if not exact_short:
        return PaddedTextEncoder(model)
    tower, reason = _causal_tower(model)
    if tower is None:
        logger.info("text encoding padded to the full context: %s", reason)
        return PaddedTextEncoder(model)
    logger.debug("text encoding cut to each batch's longest caption (%s)", reason)
    return ExactShortTextEncoder(tower)
