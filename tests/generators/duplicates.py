"""A small img2dataset pool with planted duplicates of known kinds, for the dedup tests and
benchmark. Every distinct image is a smooth random texture (a few random low-resolution colour
fields upsampled, plus a drawn shape), so two distinct images are far apart in pHash.

Planted, spread over the shards in a fixed shuffled order: exact byte copies, PNG re-saves of
a JPEG's decoded pixels (same pixels, other bytes), JPEG re-encodes at quality 70, resized
copies, slight crops (a 1/128 margin per side at 128 px) and, per shard, a sample that failed
to download and one whose image is corrupt. ``truth`` says, per key, which original it
copies and how.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from curate.io.img2dataset import ShardSample, write_img2dataset_shard

KINDS = ("byte_copy", "png_resave", "reencode", "resize", "crop")
EXACT_KINDS = ("byte_copy", "png_resave")  # what the exact level must find
_URL = "http://127.0.0.1:8000/dup/"


@dataclass(frozen=True)
class Planted:
    """One sample's ground truth: its original's index and the kind ("original", a KIND,
    "failed" or "corrupt")."""

    source: int
    kind: str


@dataclass(frozen=True)
class DuplicatePool:
    root: Path
    keys: list[str]
    truth: dict[str, Planted]


def texture(rng: np.random.Generator, size: int) -> Image.Image:
    """A distinct smooth image: random 6x6 colour field, upsampled, with a random ellipse."""
    field = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(field, "RGB").resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    x, y = rng.uniform(0.1, 0.6, 2) * size
    w, h = rng.uniform(0.15, 0.35, 2) * size
    draw.ellipse((x, y, x + w, y + h), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def encode(image: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def variant(data: bytes, kind: str, size: int) -> bytes:
    """A copy of JPEG ``data`` of the given kind."""
    decoded = Image.open(io.BytesIO(data)).convert("RGB")
    if kind == "byte_copy":
        return data
    if kind == "png_resave":
        return encode(decoded, "PNG")
    if kind == "reencode":
        return encode(decoded, quality=70)
    if kind == "resize":
        return encode(decoded.resize((size * 3 // 4, size * 3 // 4), Image.Resampling.LANCZOS))
    if kind == "crop":
        margin = max(1, size // 128)  # pHash moves fast under crops: keep them slight
        return encode(decoded.crop((margin, margin, size - margin, size - margin)))
    raise ValueError(f"unknown kind {kind!r}")


def write_duplicate_pool(out_dir: Path | str, *, originals: int = 50, copies_per_kind: int = 5,
                         num_shards: int = 3, size: int = 128, seed: int = 0,
                         plant_bad: bool = True) -> DuplicatePool:
    """Write the pool (deterministic for the same arguments)."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = [encode(texture(rng, size)) for _ in range(originals)]
    entries: list[tuple[bytes | None, Planted]] = [(d, Planted(i, "original"))
                                                   for i, d in enumerate(images)]
    for kind in KINDS:
        for source in rng.choice(originals, copies_per_kind, replace=False).tolist():
            entries.append((variant(images[source], kind, size), Planted(source, kind)))
    if plant_bad:
        for shard in range(num_shards):
            entries.append((None, Planted(-1, "failed")))
            entries.append((images[shard][: len(images[shard]) // 3], Planted(-1, "corrupt")))
    order = rng.permutation(len(entries))
    per_shard = -(-len(entries) // num_shards)
    keys, truth = [], {}
    for shard in range(num_shards):
        samples = []
        for index, entry in enumerate(order[shard * per_shard:(shard + 1) * per_shard]):
            data, planted = entries[int(entry)]
            key = f"{shard:05d}{index:04d}"
            failed = planted.kind == "failed"
            samples.append(ShardSample(
                key=key, url=f"{_URL}{key}.jpg", caption=f"texture number {planted.source}",
                image=None if failed else data,
                status="failed_to_download" if failed else "success",
                error_message="HTTP Error 404: Not Found" if failed else None,
                width=None if failed else size, height=None if failed else size,
                sha256=None if failed or data is None else hashlib.sha256(data).hexdigest(),
                in_tar=not failed))
            keys.append(key)
            truth[key] = planted
        write_img2dataset_shard(root, f"{shard:05d}", samples)
    return DuplicatePool(root, keys, truth)
