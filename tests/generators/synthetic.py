"""A small, real image-text pool in img2dataset's webdataset layout, with planted bad samples.

Used by tests, benchmarks and the quick-start job. Nothing is downloaded: every good image is a
JPEG drawn with PIL (a background colour and one or two coloured shapes) and its caption describes
what was drawn. The output is deterministic: the same arguments give byte-identical files.

Per shard ``NNNNN`` the writer produces what img2dataset's ``output_format="webdataset"`` does:

* ``NNNNN.tar``: per successful sample ``{key}.jpg``, ``{key}.json``, ``{key}.txt`` (adjacent,
  key order);
* ``NNNNN.parquet``: one row per attempted sample, failed downloads included;
* ``NNNNN_stats.json``: counts, timings and a ``status_dict``.

With ``plant_bad=True`` exactly one sample of each kind in :data:`PLANTED_KINDS` is planted.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from curate.io.img2dataset import ShardSample, write_img2dataset_shard

logger = logging.getLogger(__name__)

PLANTED_KINDS: tuple[str, ...] = (
    "failed_to_download",
    "corrupt_image",
    "unsupported_format",
    "missing_caption",
    "missing_image",
    "too_large",
)

#: Side, in pixels, that the planted ``too_large`` PNG header claims.
TOO_LARGE_SIDE = 40_000
#: Fraction of a real JPEG's bytes kept for the planted ``corrupt_image``.
CORRUPT_KEEP_FRACTION = 0.4
#: Bytes stored as the ``.jpg`` member of the planted ``unsupported_format`` sample.
UNSUPPORTED_BYTES = b"<html><body>not an image</body></html>\n"
#: error_message of the planted ``failed_to_download`` row.
DOWNLOAD_ERROR = "HTTP Error 404: Not Found"

_MTIME = 1_700_000_000  # fixed tar member mtime and stats start time, for reproducible output
_URL_PREFIX = "http://127.0.0.1:8000/"

_COLORS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (220, 30, 40)),
    ("green", (40, 170, 60)),
    ("blue", (40, 80, 220)),
    ("yellow", (245, 215, 40)),
    ("orange", (250, 140, 20)),
    ("purple", (130, 50, 170)),
    ("pink", (245, 130, 180)),
    ("brown", (120, 75, 35)),
    ("black", (15, 15, 15)),
    ("white", (245, 245, 245)),
    ("gray", (128, 128, 128)),
    ("cyan", (40, 200, 210)),
    ("teal", (20, 120, 120)),
    ("navy", (20, 30, 100)),
    ("beige", (225, 210, 175)),
)
_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "ring")
_SIZES: tuple[tuple[str, float], ...] = (("small", 0.16), ("medium", 0.26), ("large", 0.38))

_SINGLE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {size} {color} {shape} on a {bg} background",
    "{size} {color} {shape} {where}",
    "a {color} {shape} {where} against a plain {bg} backdrop",
    "close-up picture of a {size} {color} {shape} on {bg}",
    "{color} {shape} icon on a {bg} background",
    "simple flat illustration of a {size} {color} {shape} {where}, {bg} background",
    "a {shape} painted {color} on a {bg} wall",
    "stock image: {size} {color} {shape}",
)
_PAIR_TEMPLATES: tuple[str, ...] = (
    "a {color} {shape} and a {color2} {shape2} on a {bg} background",
    "two shapes, a {size} {color} {shape} {where} and a {color2} {shape2}",
    "a photo of a {color} {shape} next to a {size2} {color2} {shape2} on {bg}",
    "{color} {shape} with a {color2} {shape2} {where2}, plain {bg} backdrop",
)
_ARTICLE_BEFORE_VOWEL = re.compile(r"\b([Aa]) (?=[aeiou])")  # "a orange" -> "an orange"
_PREFIXES: tuple[str, ...] = ("", "", "", "image of ", "free download: ", "new listing - ")
_SUFFIXES: tuple[str, ...] = (
    "",
    "",
    "",
    ", taken outdoors on a sunny afternoon",
    ", high resolution stock photo",
    ", minimalist geometric art print for your living room",
    " | royalty free vector graphic",
    ", shot with a phone camera in natural light",
    ". perfect for kids, classrooms and learning the names of shapes and colours",
    ", available in many sizes",
)


@dataclass(frozen=True)
class SyntheticPool:
    """Where a synthetic pool was written and what is in it."""

    root: Path
    shards: list[str]  # ["00000", "00001", ...]
    keys: list[str]  # every key in parquet order, all shards
    planted: dict[str, str]  # key -> kind, for the planted bad samples only


def write_synthetic_pool(
    out_dir: Path | str,
    *,
    num_shards: int = 3,
    samples_per_shard: int = 12,
    image_size: int = 64,
    seed: int = 0,
    plant_bad: bool = True,
    with_uid_column: bool = False,
    jpeg_quality: int = 90,
) -> SyntheticPool:
    """Write a deterministic pool of ``num_shards`` shards into ``out_dir`` and describe it.

    Good samples are ``image_size`` square RGB JPEGs with matching captions. With ``plant_bad``
    one sample of each :data:`PLANTED_KINDS` is planted, spread over the shards; this needs
    ``samples_per_shard >= 6`` and leaves at least two good samples in every shard.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 1 <= samples_per_shard <= 10_000:
        raise ValueError(f"samples_per_shard must be in [1, 10000], got {samples_per_shard}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
    positions = _planted_positions(num_shards, samples_per_shard) if plant_bad else {}

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards: list[str] = []
    keys: list[str] = []
    planted: dict[str, str] = {}
    for shard_id in range(num_shards):
        samples = []
        for index in range(samples_per_shard):
            key = f"{shard_id:05d}{index:04d}"
            # Every sample draws from the RNG the same way, planted or not, so the good samples
            # do not depend on plant_bad.
            sample = _good_sample(rng, key, image_size, jpeg_quality)
            if with_uid_column:
                sample.uid = hashlib.md5(f"{seed}:{key}".encode()).hexdigest()
            kind = positions.get((shard_id, index))
            if kind is not None:
                _plant(sample, kind)
                planted[key] = kind
            samples.append(sample)
        shard = f"{shard_id:05d}"
        write_img2dataset_shard(root, shard, samples, with_uid_column)
        shards.append(shard)
        keys.extend(s.key for s in samples)
    logger.info(
        "wrote synthetic pool: %d shards, %d samples, %d planted, under %s",
        len(shards),
        len(keys),
        len(planted),
        root,
    )
    return SyntheticPool(root=root, shards=shards, keys=keys, planted=planted)


def truncate_file(path: Path | str, keep_fraction: float) -> None:
    """Cut a file (typically a shard tar) to ``keep_fraction`` of its bytes, in place."""
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction}")
    size = os.path.getsize(path)
    os.truncate(path, int(size * keep_fraction))


def png_header_bytes(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` RGB pixels (the data is not there)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00\x00\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _planted_positions(num_shards: int, samples_per_shard: int) -> dict[tuple[int, int], str]:
    """(shard_id, index) -> kind: kind i goes to shard i % num_shards, spread within it."""
    if samples_per_shard < 6:
        raise ValueError(f"plant_bad needs samples_per_shard >= 6, got {samples_per_shard}")
    per_shard: dict[int, list[str]] = {}
    for i, kind in enumerate(PLANTED_KINDS):
        per_shard.setdefault(i % num_shards, []).append(kind)
    most = max(len(kinds) for kinds in per_shard.values())
    if samples_per_shard < most + 2:
        raise ValueError(
            f"plant_bad with {num_shards} shard(s) needs samples_per_shard >= {most + 2}, "
            f"got {samples_per_shard}"
        )
    positions: dict[tuple[int, int], str] = {}
    for shard_id, kinds in per_shard.items():
        k = len(kinds)
        for j, kind in enumerate(kinds):
            # Evenly spread, distinct since samples_per_shard >= k; shifted per shard.
            index = ((2 * j + 1) * samples_per_shard // (2 * k) + shard_id) % samples_per_shard
            positions[(shard_id, index)] = kind
    return positions


def _plant(sample: ShardSample, kind: str) -> None:
    """Turn a good sample into the planted bad sample ``kind``."""
    if kind == "failed_to_download":
        sample.status = "failed_to_download"
        sample.error_message = DOWNLOAD_ERROR
        sample.image = None
        sample.width = sample.height = None
        sample.original_width = sample.original_height = None
        sample.sha256 = None
        sample.in_tar = False
        return
    if kind == "corrupt_image":
        assert sample.image is not None
        sample.image = sample.image[: max(1, int(len(sample.image) * CORRUPT_KEEP_FRACTION))]
    elif kind == "unsupported_format":
        sample.image = UNSUPPORTED_BYTES
    elif kind == "missing_caption":
        sample.caption = None
        sample.has_txt = False
    elif kind == "missing_image":
        sample.image = None  # the metadata still claims a successful download
    elif kind == "too_large":
        sample.image = png_header_bytes(TOO_LARGE_SIDE, TOO_LARGE_SIDE)
        sample.width = sample.height = TOO_LARGE_SIDE
        sample.original_width = sample.original_height = TOO_LARGE_SIDE
    else:
        raise ValueError(f"unknown planted kind {kind!r}; expected one of {PLANTED_KINDS}")
    if sample.image is not None:
        sample.sha256 = hashlib.sha256(sample.image).hexdigest()


def _good_sample(rng: np.random.Generator, key: str, size: int, quality: int) -> ShardSample:
    """Draw one image, describe it, encode it as JPEG."""
    n_colors = len(_COLORS)
    bg = int(rng.integers(n_colors))
    n_shapes = 1 if rng.random() < 0.6 else 2
    image = Image.new("RGB", (size, size), _COLORS[bg][1])
    draw = ImageDraw.Draw(image)
    parts: list[dict[str, str]] = []
    for _ in range(n_shapes):
        color = int(rng.integers(n_colors - 1))
        color += color >= bg  # never the background colour
        shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
        size_name, rel = _SIZES[int(rng.integers(len(_SIZES)))]
        radius = max(2.0, rel * size * float(rng.uniform(0.85, 1.15)))
        cx = float(rng.uniform(radius, size - radius))
        cy = float(rng.uniform(radius, size - radius))
        _draw_shape(draw, shape, cx, cy, radius, _COLORS[color][1])
        parts.append(
            {
                "color": _COLORS[color][0],
                "shape": shape,
                "size": size_name,
                "where": _where(cx, cy, size),
            }
        )
    caption = _caption(rng, parts, _COLORS[bg][0])
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    data = buf.getvalue()
    # img2dataset resizes to image_size and records the source size; make the source sizes vary.
    original_width = int(size * rng.uniform(1.0, 4.0))
    original_height = int(size * rng.uniform(1.0, 4.0))
    return ShardSample(
        key=key,
        url=f"{_URL_PREFIX}{key}.jpg",
        caption=caption,
        image=data,
        width=size,
        height=size,
        original_width=original_width,
        original_height=original_height,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    r: float,
    fill: tuple[int, int, int],
) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(1, int(r * 0.3)))
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        points = [
            (cx + float(rr * np.cos(a)), cy - float(rr * np.sin(a)))
            for a, rr in zip(angles, radii, strict=True)
        ]
        draw.polygon(points, fill=fill)
    elif shape == "cross":
        t = r * 0.33
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _where(cx: float, cy: float, size: int) -> str:
    col = ("left", "center", "right")[min(2, int(3 * cx / size))]
    row = ("top", "middle", "bottom")[min(2, int(3 * cy / size))]
    if row == "middle" and col == "center":
        return "in the center"
    if row == "middle":
        return f"on the {col}"
    if col == "center":
        return f"at the {row}"
    return f"in the {row} {col} corner"


def _caption(rng: np.random.Generator, parts: list[dict[str, str]], bg: str) -> str:
    """A caption of 5 to 30 words describing the drawn shapes."""
    first = parts[0]
    fields = {**first, "bg": bg}
    if len(parts) == 2:
        second = parts[1]
        fields.update(
            color2=second["color"],
            shape2=second["shape"],
            size2=second["size"],
            where2=second["where"],
        )
        templates = _PAIR_TEMPLATES
    else:
        templates = _SINGLE_TEMPLATES
    body = templates[int(rng.integers(len(templates)))].format(**fields)
    prefix = _PREFIXES[int(rng.integers(len(_PREFIXES)))]
    suffix = _SUFFIXES[int(rng.integers(len(_SUFFIXES)))]
    caption = _ARTICLE_BEFORE_VOWEL.sub(r"\1n ", f"{prefix}{body}{suffix}")
    words = caption.split()
    if len(words) > 30:
        caption = " ".join(words[:30])
    elif len(words) < 5:
        caption = f"{caption} on a {bg} background"
    if rng.random() < 0.5:
        caption = caption[0].upper() + caption[1:]
    return caption
