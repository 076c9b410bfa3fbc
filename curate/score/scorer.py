"""The scorer: a loaded filter network that turns decoded batches into cosine similarities.

A process loads each scorer once (``get_scorer``), whatever the number of shards it scores.
Text goes through the exact short-text encoder and ViT images through the exact class-token
encoder when the towers allow it (see ``text_encoder`` and ``image_encoder``);
convolutional image towers run channels-last on CPU. Precision is fp32 on CPU and fp16
autocast on CUDA unless asked otherwise: ``bf16`` on CPU is lossy and only used when
requested.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from curate.executor import load_once
from curate.models import LoadedModel, ModelSpec, load_model, use_ieee_fp32
from curate.score.image_encoder import make_image_encoder
from curate.score.image_loader import ImageLoader, make_image_loader
from curate.score.text_encoder import make_text_encoder

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 is for CUDA; on CPU use bf16 (lossy) or fp32")
    return _AUTOCAST_DTYPES.get(precision)


def _has_convolutions(module: torch.nn.Module) -> bool:
    return any(
        isinstance(m, torch.nn.Conv2d) and m.kernel_size != m.stride for m in module.modules()
    )


def resolve_device(device: str, slot: int = 0) -> str:
    """``auto`` picks CUDA when present; a worker's slot picks its GPU (slot mod GPUs)."""
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
    precision: str = "auto"
    exact_shortcuts: bool = True
    decoder: str = "auto"


@dataclass(frozen=True)
class EncodedBatch:
    """Scores and unit-norm embeddings of one batch, as float32 numpy arrays."""

    scores: np.ndarray
    image_embeddings: np.ndarray
    text_embeddings: np.ndarray


class Scorer:
    """Eval preprocessing, tokenisation and image-text cosine similarity of one model."""

    def __init__(
        self,
        loaded: LoadedModel,
        precision: str = "auto",
        exact_shortcuts: bool = True,
        decoder: str = "auto",
    ) -> None:
        self.loaded = loaded
        self.decoder = decoder
        self.device = loaded.device
        self.embed_dim = loaded.embed_dim
        self.autocast_dtype = resolve_precision(precision, self.device)
        if self.autocast_dtype is None:
            use_ieee_fp32(self.device)
        self.text_encoder = make_text_encoder(loaded.model, exact_shortcuts)
        self.image_encoder = make_image_encoder(loaded.model, exact_shortcuts)
        visual = getattr(loaded.model, "visual", None)
        # channels-last speeds up real convolutions on CPU; a ViT's patchify conv gains nothing
        self.channels_last = visual is not None and _has_convolutions(visual)
        if self.channels_last:
            visual.to(memory_format=torch.channels_last)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.loaded.preprocess(image)

    def image_loader(self, max_pixels: int) -> ImageLoader:
        """Bytes to model input: Pillow, or the GPU's JPEG decoder (see ``image_loader``)."""
        return make_image_loader(self.loaded.preprocess, self.device, self.decoder, max_pixels)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        return self.loaded.tokenizer(captions)

    def text_lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        """Positions each caption needs; batches of similar length waste the least."""
        return self.text_encoder.lengths(tokens)

    def _autocast(self) -> torch.autocast:
        enabled = self.autocast_dtype is not None
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, non_blocking=self.device.type == "cuda")

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm float32 image embeddings, on the CPU."""
        images = self._to_device(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            features = self.image_encoder(images)
        return features.float().cpu()

    @torch.inference_mode()
    def encode_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-norm float32 text embeddings, on the CPU."""
        with self._autocast():
            features = self.text_encoder(self._to_device(tokens))
        return features.float().cpu()

    def encode(self, images: torch.Tensor, tokens: torch.Tensor) -> EncodedBatch:
        """L2-normalised image and text embeddings and their row-wise cosine similarity."""
        image_features = self.encode_images(images)
        text_features = self.encode_texts(tokens)
        scores = (image_features * text_features).sum(dim=-1)
        return EncodedBatch(
            scores=scores.numpy().astype(np.float32),
            image_embeddings=image_features.numpy(),
            text_embeddings=text_features.numpy(),
        )


def get_scorer(config: ScorerConfig, slot: int = 0) -> Scorer:
    """The process's scorer for ``config``, loaded on first use and kept."""

    def load() -> Scorer:
        if config.threads:
            torch.set_num_threads(config.threads)
        device = resolve_device(config.device, slot)
        loaded = load_model(config.spec, device=device)
        scorer = Scorer(loaded, config.precision, config.exact_shortcuts, config.decoder)
        logger.info(
            "scorer %s ready on %s (%d threads)", config.spec.id, device, torch.get_num_threads()
        )
        return scorer

    return load_once(("scorer", config, slot), load)
