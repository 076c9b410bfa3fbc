"""Pairs decoded once into memory at the model's input size and augmented as tensors.

For small proxy runs (``evaluate``'s students, the demo's filters) decoding a JPEG and running
PIL's RandomResizedCrop per sample costs more than a tiny model's step. Here every pair is
decoded once: the shorter side resized to ``image_size + margin``, the centre square kept as
uint8, the caption tokenised. Each batch then takes one random ``image_size`` crop per sample
(offsets drawn from a generator seeded by (seed, epoch, batch), so a run and its resume repeat)
and open_clip's normalisation. The last cache is kept for the next run on the same pairs in the
same process, so an evaluation's seeds decode once.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from curate.errors import UserError
from curate.train.data import EpochBatchSampler, PairIndex, sample_seed

logger = logging.getLogger(__name__)

CROP_MARGIN = 4  # pixels of each side kept beyond the model's input for random crops
MAX_CACHE_BYTES = 4 << 30


@dataclass
class DecodedPairs:
    """uint8 images [N, 3, S, S], tokens [N, context] and which pairs decoded."""

    images: torch.Tensor
    tokens: torch.Tensor
    valid: torch.Tensor  # bool [N]

    def __len__(self) -> int:
        return len(self.tokens)

    def take(self, positions: np.ndarray) -> DecodedPairs:
        pos = torch.from_numpy(np.asarray(positions, dtype=np.int64))
        return DecodedPairs(self.images[pos], self.tokens[pos], self.valid[pos])


def _decode_square(data: bytes, side: int) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = side / min(image.size)
    width, height = max(side, round(image.width * scale)), max(side, round(image.height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (width - side) // 2, (height - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side))).transpose(2, 0, 1)


def decode_pairs(
    index: PairIndex,
    image_size: int,
    tokenizer: Callable[[list[str]], torch.Tensor],
    progress: bool = False,
) -> DecodedPairs:
    """Decode and tokenise every pair of ``index`` (undecodable ones are marked, not dropped)."""
    side = image_size + CROP_MARGIN
    needed = len(index) * 3 * side * side
    if needed > MAX_CACHE_BYTES:
        raise UserError(
            f"the decoded cache of {len(index)} pairs at {side} px would take "
            f"{needed / 2**30:.1f} GiB (limit {MAX_CACHE_BYTES / 2**30:.0f} GiB); "
            "train without --decoded-cache"
        )
    images = np.zeros((len(index), 3, side, side), dtype=np.uint8)
    valid = np.ones(len(index), dtype=bool)
    for i in tqdm(range(len(index)), desc="decode", unit="img", disable=not progress):
        try:
            images[i] = _decode_square(index.read_image_bytes(i), side)
        except Exception as exc:  # Pillow raises many kinds for bad bytes
            logger.debug("sample %s: cannot decode (%s)", index.keys[i], exc)
            valid[i] = False
    tokens = tokenizer([index.captions[i] for i in range(len(index))])
    return DecodedPairs(torch.from_numpy(images), tokens, torch.from_numpy(valid))


_last: tuple[tuple, DecodedPairs] | None = None


def _fingerprint(index: PairIndex, image_size: int) -> tuple:
    return (
        tuple(str(t) for t in index.tars),
        index.tar_ids.tobytes(),
        index.offsets.tobytes(),
        index.captions.data.tobytes(),
        image_size,
    )


def cached_decode(
    index: PairIndex,
    image_size: int,
    tokenizer: Callable[[list[str]], torch.Tensor],
    progress: bool = False,
) -> DecodedPairs:
    """:func:`decode_pairs`, reusing the previous call's result for the same pairs and size."""
    global _last
    key = _fingerprint(index, image_size)
    if _last is None or _last[0] != key:
        _last = None  # free the old cache before building the new one
        _last = (key, decode_pairs(index, image_size, tokenizer, progress))
    return _last[1]


class DecodedBatches:
    """Batches ``(images, tokens, undecodable)`` as :func:`collate_pairs` gives them, from the
    same resumable (epoch, position) sampling as the streaming loader."""

    def __init__(
        self,
        pairs: DecodedPairs,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        sampler: EpochBatchSampler,
        seed: int,
    ) -> None:
        self.pairs = pairs
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255
        self.sampler = sampler
        self.seed = seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        size, side = self.image_size, self.pairs.images.shape[-1]
        for items in self.sampler:
            epoch, first = items[0]
            positions = torch.tensor([p for _, p in items])
            positions = positions[self.pairs.valid[positions]]
            bad = len(items) - len(positions)
            rng = np.random.default_rng(sample_seed(self.seed, epoch, first))
            offsets = rng.integers(0, side - size + 1, size=(len(positions), 2))
            source = self.pairs.images[positions]
            crops = [source[i, :, y : y + size, x : x + size] for i, (y, x) in enumerate(offsets)]
            images = torch.stack(crops).float() if crops else torch.empty(0, 3, size, size)
            images = (images - self.mean) / self.std
            yield images, self.pairs.tokens[positions], bad
