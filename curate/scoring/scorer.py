"""The scorer: a loaded filter network that turns decoded batches into cosine similarities.

A process loads each scorer once (``get_scorer``), whatever the number of shards it scores.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from curate.models import LoadedModel, ModelSpec, load_model

logger = logging.getLogger(__name__)


def resolve_device(device: str, slot: int = 0) -> str:
    """``auto`` picks CUDA when present; a worker's slot picks its GPU (one worker per GPU)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError("--device cuda asked for, but no CUDA device is visible")
        return f"cuda:{slot % count}"
    return device


@dataclass(frozen=True)
class ScorerConfig:
    """What a worker needs to load the filter network: the spec, device and thread count."""

    spec: ModelSpec
    device: str = "auto"
    threads: int | None = None


@dataclass(frozen=True)
class EncodedBatch:
    """Scores and unit-norm embeddings of one batch, as float32 numpy arrays."""

    scores: np.ndarray
    image_embeddings: np.ndarray
    text_embeddings: np.ndarray


class Scorer:
    """Eval preprocessing, tokenisation and image-text cosine similarity of one model."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.device = loaded.device
        self.embed_dim = loaded.embed_dim

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.loaded.preprocess(image)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        return self.loaded.tokenizer(captions)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor, tokens: torch.Tensor) -> EncodedBatch:
        """L2-normalised image and text embeddings and their row-wise cosine similarity."""
        model = self.loaded.model
        on_cuda = self.device.type == "cuda"
        images = images.to(self.device, non_blocking=on_cuda)
        tokens = tokens.to(self.device, non_blocking=on_cuda)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=on_cuda):
            image_features = model.encode_image(images, normalize=True).float()
            text_features = model.encode_text(tokens, normalize=True).float()
        scores = (image_features * text_features).sum(dim=-1)
        return EncodedBatch(
            scores=scores.cpu().numpy().astype(np.float32),
            image_embeddings=image_features.cpu().numpy(),
            text_embeddings=text_features.cpu().numpy(),
        )


_CACHE: dict[tuple[ScorerConfig, int], Scorer] = {}
_CACHE_LOCK = threading.Lock()


def get_scorer(config: ScorerConfig, slot: int = 0) -> Scorer:
    """The process's scorer for ``config``, loaded on first use and kept."""
    with _CACHE_LOCK:
        key = (config, slot)
        if key not in _CACHE:
            if config.threads:
                torch.set_num_threads(config.threads)
            device = resolve_device(config.device, slot)
            _CACHE[key] = Scorer(load_model(config.spec, device=device))
            logger.info("scorer %s ready on %s (%d threads)", config.spec.id, device,
                        torch.get_num_threads())
        return _CACHE[key]
