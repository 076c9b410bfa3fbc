"""A teacher ensemble: each model embeds the augmented views and the captions, concatenated.

Every teacher sees the views at its own image size with its own mean and std (from its
open_clip preprocess config); its L2-normalised embeddings form one slice of the stored row,
in the order the teachers were given. Computation is float32; storage may be bfloat16.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import open_clip
import torch
import torch.nn.functional as nnf
import torchvision.transforms.functional as F
from torchvision.transforms import InterpolationMode

from curate.models import LoadedModel, ModelSpec, load_model, use_ieee_fp32

logger = logging.getLogger(__name__)


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


@dataclass
class Teacher:
    """One loaded teacher and the image normalisation it expects."""

    loaded: LoadedModel
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def load(cls, spec: ModelSpec, device: str | torch.device = "cpu") -> Teacher:
        loaded = load_model(spec, device=device)
        use_ieee_fp32(loaded.device)  # stored targets: fp32 as on the CPU, no TF32 convolutions
        cfg = open_clip.get_model_preprocess_cfg(loaded.model)
        return cls(
            loaded=loaded,
            image_size=_pair(cfg.get("size", 224)),
            mean=tuple(float(x) for x in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            std=tuple(float(x) for x in cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        )

    @property
    def embed_dim(self) -> int:
        return self.loaded.embed_dim

    def describe(self) -> dict[str, Any]:
        """The teacher's record in config.json."""
        return {
            **self.loaded.describe(),
            "image_size": list(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def prepare(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 views [N, 3, H, W] -> this teacher's normalised float input."""
        x = views.to(self.loaded.device).float().div_(255.0)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.resize(x, list(self.image_size), InterpolationMode.BICUBIC, antialias=True)
        return F.normalize(x, self.mean, self.std)

    @torch.inference_mode()
    def embed_images(self, views: torch.Tensor) -> torch.Tensor:
        features = self.loaded.model.encode_image(self.prepare(views))
        return nnf.normalize(features.float(), dim=-1).cpu()

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.loaded.tokenizer(texts).to(self.loaded.device)
        features = self.loaded.model.encode_text(tokens)
        return nnf.normalize(features.float(), dim=-1).cpu()


class TeacherEnsemble:
    """Teachers in command order; embeddings are their slices side by side."""

    def __init__(self, teachers: list[Teacher], batch_size: int = 64) -> None:
        if not teachers:
            raise ValueError("a teacher ensemble needs at least one teacher")
        self.teachers = teachers
        self.batch_size = batch_size

    @classmethod
    def load(
        cls, specs: tuple[ModelSpec, ...], device: str | torch.device = "cpu", batch_size: int = 64
    ) -> TeacherEnsemble:
        return cls([Teacher.load(spec, device) for spec in specs], batch_size)

    @property
    def dims(self) -> list[int]:
        return [t.embed_dim for t in self.teachers]

    def describe(self) -> list[dict[str, Any]]:
        return [t.describe() for t in self.teachers]

    def _batched(self, count: int, fn) -> torch.Tensor:
        parts = [
            fn(start, min(start + self.batch_size, count))
            for start in range(0, count, self.batch_size)
        ]
        if not parts:
            return torch.empty(0, sum(self.dims))
        return torch.cat(parts)

    def embed_images(self, views: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] uint8 views -> [N, sum D] float32, each teacher's slice unit-norm."""
        return self._batched(
            len(views),
            lambda a, b: torch.cat([t.embed_images(views[a:b]) for t in self.teachers], dim=1),
        )

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Captions -> [N, sum D] float32, each teacher's slice unit-norm."""
        return self._batched(
            len(texts),
            lambda a, b: torch.cat([t.embed_texts(texts[a:b]) for t in self.teachers], dim=1),
        )


def slices(dims: list[int]) -> list[slice]:
    """Column ranges of each teacher in a concatenated row."""
    out, start = [], 0
    for dim in dims:
        out.append(slice(start, start + dim))
        start += dim
    return out
