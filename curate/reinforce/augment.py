"""Reproducible image augmentations: RandomResizedCrop + RandAugment with stored parameters.

Each augmentation is drawn from an explicit ``torch.Generator`` (seeded from the run's seed and
the sample's uid, so a rerun draws the same ones) and stored compactly, as in
apple/ml-mobileclip-dr's ``{uid}.paug.json``::

    {"random_resized_crop": [top, left, height, width],
     "rand_augment": [[op_index, magnitude], ...]}

Replaying the stored parameters on the same image gives bit-identical pixels: the crop and the
operations are torchvision's own functions on the decoded PIL image, in the same order.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms.autoaugment import _apply_op

from curate.errors import UserError

# torchvision RandAugment's augmentation space, in its order; the stored op_index points here.
RAND_AUGMENT_OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
RRC_KEY = "random_resized_crop"
RAND_AUGMENT_KEY = "rand_augment"
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclass(frozen=True)
class AugmentConfig:
    """How the K views of an image are drawn (MobileCLIP's RRC + RandAugment defaults)."""

    image_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"
    rand_augment: bool = True
    num_ops: int = 2
    magnitude: int = 9
    num_magnitude_bins: int = 31
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(x) for x in self.scale))
        object.__setattr__(self, "ratio", tuple(float(x) for x in self.ratio))
        if self.image_size < 1:
            raise UserError(f"augmentation image size must be positive, got {self.image_size}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise UserError(f"crop scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise UserError(f"crop ratio must satisfy 0 < min <= max, got {self.ratio}")
        if self.interpolation not in INTERPOLATIONS:
            raise UserError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}")
        if self.num_ops < 0 or not 0 <= self.magnitude < self.num_magnitude_bins:
            raise UserError("RandAugment needs num_ops >= 0 and 0 <= magnitude < bins")

    def to_dict(self) -> dict[str, Any]:
        """The record stored in config.json (lists, not tuples)."""
        record = asdict(self)
        record["scale"] = list(self.scale)
        record["ratio"] = list(self.ratio)
        record["rand_augment_ops"] = list(RAND_AUGMENT_OPS)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> AugmentConfig:
        fields = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        return cls(**fields)


def sample_generator(seed: int, uid: str) -> torch.Generator:
    """A generator seeded from (seed, uid): the same sample draws the same views on any rerun."""
    digest = hashlib.sha256(f"{seed}\t{uid}".encode()).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return generator


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=generator).item())


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(0, high, (1,), generator=generator).item())


def sample_crop(
    width: int, height: int, config: AugmentConfig, generator: torch.Generator
) -> list[int]:
    """RandomResizedCrop's parameters [top, left, height, width] (torchvision's algorithm)."""
    area = height * width
    log_ratio = (math.log(config.ratio[0]), math.log(config.ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(config.scale[0], config.scale[1], generator)
        aspect = math.exp(_uniform(log_ratio[0], log_ratio[1], generator))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = _randint(height - h + 1, generator)
            left = _randint(width - w + 1, generator)
            return [top, left, h, w]
    in_ratio = width / height
    if in_ratio < config.ratio[0]:
        w, h = width, int(round(width / config.ratio[0]))
    elif in_ratio > config.ratio[1]:
        h, w = height, int(round(height * config.ratio[1]))
    else:
        w, h = width, height
    return [(height - h) // 2, (width - w) // 2, h, w]


def _augmentation_space(config: AugmentConfig) -> dict[str, tuple[torch.Tensor, bool]]:
    size = (config.image_size, config.image_size)
    space = T.RandAugment()._augmentation_space(config.num_magnitude_bins, size)
    if tuple(space) != RAND_AUGMENT_OPS:  # a torchvision that reorders ops would break replay
        raise RuntimeError(f"unexpected RandAugment op order in torchvision: {list(space)}")
    return space


def sample_rand_augment(config: AugmentConfig, generator: torch.Generator) -> list[list]:
    """RandAugment's ops as [[op_index, magnitude], ...] (torchvision's sampling rule)."""
    space = _augmentation_space(config)
    ops = []
    for _ in range(config.num_ops):
        index = _randint(len(RAND_AUGMENT_OPS), generator)
        magnitudes, signed = space[RAND_AUGMENT_OPS[index]]
        magnitude = float(magnitudes[config.magnitude].item()) if magnitudes.ndim > 0 else 0.0
        if signed and _randint(2, generator):
            magnitude = -magnitude
        ops.append([index, magnitude])
    return ops


def sample_params(
    image: Image.Image, config: AugmentConfig, generator: torch.Generator
) -> dict[str, Any]:
    """One augmentation's parameters for ``image``."""
    params: dict[str, Any] = {RRC_KEY: sample_crop(image.width, image.height, config, generator)}
    if config.rand_augment:
        params[RAND_AUGMENT_KEY] = sample_rand_augment(config, generator)
    return params


def apply_params(image: Image.Image, params: dict[str, Any], config: AugmentConfig) -> Image.Image:
    """Replay stored parameters on an RGB image: crop-resize, then the RandAugment ops."""
    top, left, height, width = (int(v) for v in params[RRC_KEY])
    interpolation = T.InterpolationMode(config.interpolation)
    out = F.resized_crop(
        image, top, left, height, width, [config.image_size, config.image_size], interpolation
    )
    for op_index, magnitude in params.get(RAND_AUGMENT_KEY) or []:
        out = _apply_op(
            out,
            RAND_AUGMENT_OPS[int(op_index)],
            float(magnitude),
            interpolation=T.InterpolationMode.NEAREST,
            fill=None,
        )
    return out


def to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """[3, H, W] uint8 tensor of an RGB PIL image."""
    return F.pil_to_tensor(image.convert("RGB"))


def augment(
    image: Image.Image, k: int, config: AugmentConfig, uid: str
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """K views of ``image`` as a [K, 3, S, S] uint8 tensor, and their parameters."""
    image = image.convert("RGB")
    generator = sample_generator(config.seed, uid)
    params = [sample_params(image, config, generator) for _ in range(k)]
    return replay(image, params, config), params


def replay(image: Image.Image, params: list[dict[str, Any]], config: AugmentConfig) -> torch.Tensor:
    """The [K, 3, S, S] uint8 views that ``params`` describe."""
    image = image.convert("RGB")
    return torch.stack([to_uint8_tensor(apply_params(image, p, config)) for p in params])
