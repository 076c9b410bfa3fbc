"""A clean, easy image-text set: one coloured shape per image, captioned "a red circle".

Every caption describes its image exactly, so a CLIP model learns the pairing within a few
dozen CPU steps. Used by the ``train-dfn`` tests and benchmark (high-quality training pairs,
in img2dataset's webdataset tar layout) and for the example zero-shot eval set in
``data/example_eval/`` (same drawing, labeled by class).
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from curate.io.shards import add_tar_member

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (245, 215, 40),
    "purple": (130, 50, 170),
    "black": (15, 15, 15),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
TEMPLATES: tuple[str, ...] = ("a {}", "a photo of a {}.", "a drawing of a {}.")
_MTIME = 1_700_000_000
_URL_PREFIX = "http://127.0.0.1:8000/shapes/"


def draw_shape(shape: str, color: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """One ``shape`` in ``color`` near the centre of a random light background."""
    background = tuple(int(v) for v in rng.integers(150, 256, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    fill = COLORS[color]
    radius = size * float(rng.uniform(0.3, 0.42))
    cx, cy = (size / 2 + rng.uniform(-size / 10, size / 10, 2)).tolist()
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon(
            [(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill
        )
    elif shape == "cross":
        w = radius / 3
        draw.rectangle([cx - radius, cy - w, cx + radius, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - radius, cx + w, cy + radius], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return image


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_shapes_pool(
    out: Path | str,
    *,
    num_shards: int = 2,
    samples_per_shard: int = 160,
    image_size: int = 32,
    seed: int = 0,
) -> Path:
    """Shards ``NNNNN.tar`` of ``{key}.jpg``, ``{key}.txt`` ("a red circle") and ``{key}.json``
    (img2dataset's per-sample metadata, with a unique url)."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colors = list(COLORS)
    for shard in range(num_shards):
        with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
            for index in range(samples_per_shard):
                key = f"{shard:05d}{index:04d}"
                color = colors[int(rng.integers(len(colors)))]
                shape = SHAPES[int(rng.integers(len(SHAPES)))]
                data = _jpeg(draw_shape(shape, color, rng, image_size))
                add_tar_member(tar, f"{key}.jpg", data, mtime=_MTIME)
                caption = f"a {color} {shape}"
                meta = {
                    "key": key,
                    "url": f"{_URL_PREFIX}{key}.jpg",
                    "caption": caption,
                    "status": "success",
                    "error_message": None,
                    "width": image_size,
                    "height": image_size,
                    "original_width": image_size,
                    "original_height": image_size,
                }
                add_tar_member(tar, f"{key}.txt", caption.encode(), mtime=_MTIME)
                add_tar_member(tar, f"{key}.json", json.dumps(meta).encode(), mtime=_MTIME)
    return root


def write_shapes_eval_set(
    out: Path | str, *, per_class: int = 2, image_size: int = 32, seed: int = 1
) -> Path:
    """A zero-shot eval set (``eval.json``, ``labels.csv``, ``images/``) over every
    colour-shape class; the format is described in ``data/README.md``."""
    root = Path(out)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = [(c, s) for c in COLORS for s in SHAPES]
    rows = []
    for label, (color, shape) in enumerate(classes):
        for _ in range(per_class):
            name = f"images/{len(rows):05d}.jpg"
            (root / name).write_bytes(_jpeg(draw_shape(shape, color, rng, image_size)))
            rows.append((name, label))
    config = {
        "name": "shapes-eval",
        "classnames": [f"{c} {s}" for c, s in classes],
        "templates": list(TEMPLATES),
    }
    (root / "eval.json").write_text(json.dumps(config, indent=2) + "\n")
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label"])
        writer.writerows(rows)
    return root
