"""Synthetic captions from an open_clip CoCa model, as MobileCLIP's reinforcement samples them.

``generate(generation_type="top_p", top_p=0.9, fixed_output_length=True)`` on S copies of each
image; every caption is cut at end-of-text and at its first '.'. Sampling uses torch's global
generator inside a forked RNG seeded by the caller, so a rerun of a shard gives the same text.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import open_clip
import torch
from PIL import Image

from curate.errors import UserError
from curate.models import LoadedModel, ModelError, ModelSpec, load_model

logger = logging.getLogger(__name__)

START_OF_TEXT = "<start_of_text>"
END_OF_TEXT = "<end_of_text>"


@dataclass(frozen=True)
class SamplingConfig:
    """How captions are sampled (MobileCLIP: S = 5, top-p 0.9, fixed-length output)."""

    num_captions: int = 5
    generation_type: str = "top_p"
    top_p: float = 0.9
    temperature: float = 1.0
    seq_len: int = 30
    fixed_output_length: bool = True

    def __post_init__(self) -> None:
        if self.num_captions < 1:
            raise UserError(f"--captions must be at least 1, got {self.num_captions}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.generation_type not in ("top_p", "top_k"):
            raise UserError("generation type must be top_p or top_k")
        if self.seq_len < 7:  # open_clip requires seq_len > min_seq_len (5) plus start token
            raise UserError(f"caption length must be at least 7 tokens, got {self.seq_len}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean_caption(text: str) -> str:
    """Cut a decoded caption at end-of-text and at its first '.'; drop the start token."""
    text = text.split(END_OF_TEXT)[0].replace(START_OF_TEXT, "")
    return text.split(".")[0].strip()


class Captioner:
    """A loaded CoCa model that writes S captions per image."""

    def __init__(self, loaded: LoadedModel, sampling: SamplingConfig) -> None:
        if not hasattr(loaded.model, "generate"):
            raise ModelError(f"captioner {loaded.spec.id} is not an open_clip CoCa model")
        self.loaded = loaded
        self.sampling = sampling
        context = int(getattr(loaded.model, "context_length", 0) or 77)
        self.seq_len = min(sampling.seq_len, context)

    @classmethod
    def load(
        cls, spec: ModelSpec, sampling: SamplingConfig, device: str | torch.device = "cpu"
    ) -> Captioner:
        return cls(load_model(spec, device=device), sampling)

    def describe(self) -> dict[str, Any]:
        return {**self.loaded.describe(), "seq_len": self.seq_len}

    @torch.inference_mode()
    def caption(self, images: list[Image.Image], seed: int) -> list[list[str]]:
        """S captions for each image, sampled under ``seed``."""
        if not images:
            return []
        s = self.sampling
        batch = torch.stack([self.loaded.preprocess(im.convert("RGB")) for im in images])
        batch = batch.repeat_interleave(s.num_captions, dim=0).to(self.loaded.device)
        devices = [self.loaded.device] if self.loaded.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            tokens = self.loaded.model.generate(
                batch,
                generation_type=s.generation_type,
                top_p=s.top_p,
                temperature=s.temperature,
                seq_len=self.seq_len,
                fixed_output_length=s.fixed_output_length,
            )
        texts = [clean_caption(open_clip.decode(row)) for row in tokens.cpu()]
        n = s.num_captions
        return [texts[i * n : (i + 1) * n] for i in range(len(images))]
