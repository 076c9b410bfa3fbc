"""The toy web world: a seeded generator of image-text data in which filtering matters.

Nobody can download a real pool here, so the product brings a world of its own. Images are
PIL drawings of 22 shape/icon classes with attributes (colour, size, position, background
texture, sometimes a second object); captions come from varied templates with synonyms
(:mod:`curate.toyworld.scene`). Three splits:

* ``hq/``: clean pairs as img2dataset webdataset shards, for training a filter (train-dfn);
* ``pool_files/`` + ``pool_index.parquet``: the web-like POOL as files to serve over HTTP and
  bring in with ``filter-pool download``; about half of it carries web noise of several kinds
  in set proportions (:mod:`curate.toyworld.noise`);
* ``eval/``: labeled held-out images, class names and prompt templates for zero-shot
  classification (``eval.json``, ``labels.csv``, ``images/``).

The ground truth of the POOL (clean or which noise, true class) goes to
``pool_labels.parquet``, which no filter or scorer reads. ``world.json`` records the config
and the counts. Every sample has its own RNG seeded by ``(seed, split, index)``: the same
config gives byte-identical files, and generation runs in parallel.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

import curate
from curate.errors import UserError
from curate.io.img2dataset import ShardSample, write_img2dataset_shard
from curate.io.workspace import refuse_other_settings, staged_directory, write_json_atomic
from curate.toyworld.noise import (
    NOISE_KINDS,
    SAMPLE_KINDS,
    PoolContext,
    PoolItem,
    SizeRanges,
    clean_base,
    make_pool_item,
    sample_rng,
)
from curate.toyworld.scene import CLASSES, encode_jpeg, render

logger = logging.getLogger(__name__)

SPLIT_IDS: dict[str, int] = {"hq": 0, "pool": 1, "eval": 2}
ASSIGN_STREAM = 99  # RNG stream (in place of an index) that assigns kinds to POOL indices

#: Share of the POOL per noise kind; the rest is clean.
DEFAULT_NOISE: dict[str, float] = {
    "mismatched": 0.12,
    "generic_alt": 0.07,
    "partly_wrong": 0.08,
    "other_language": 0.07,
    "near_duplicate": 0.06,
    "tiny_image": 0.04,
    "extreme_aspect": 0.04,
    "corrupt": 0.02,
}
SCALES: dict[str, dict[str, int]] = {
    "small": {"hq_size": 1500, "pool_size": 2500, "eval_per_class": 20},
    "full": {"hq_size": 10_000, "pool_size": 25_000, "eval_per_class": 50},
}
EVAL_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a drawing of a {}.",
    "an image of a {}.",
    "a {} icon.",
    "a {} on a plain background.",
    "a small {}.",
    "a large {}.",
)
HQ_URL = "toyworld://hq/{key}.jpg"  # HQ pairs are not served; their URL only names them
WORLD_FILE = "world.json"
POOL_INDEX = "pool_index.parquet"
POOL_LABELS = "pool_labels.parquet"
POOL_FILES = "pool_files"
_CHUNK = 250  # POOL samples per parallel task


@dataclass(frozen=True)
class ToyWorldConfig:
    """What to generate: seed, split sizes, image sizes and the POOL's noise mix."""

    seed: int = 0
    hq_size: int = SCALES["small"]["hq_size"]
    pool_size: int = SCALES["small"]["pool_size"]
    eval_per_class: int = SCALES["small"]["eval_per_class"]
    noise: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_NOISE))
    sizes: SizeRanges = field(default_factory=SizeRanges)
    hq_shard_size: int = 1000
    jpeg_quality: int = 90
    workers: int = 1

    def __post_init__(self) -> None:
        for name in ("hq_size", "pool_size", "eval_per_class"):
            if getattr(self, name) < 1:
                raise UserError(f"toy world: {name} must be >= 1, got {getattr(self, name)}")
        if self.hq_shard_size < 1 or self.workers < 1:
            raise UserError("toy world: hq_shard_size and workers must be >= 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise UserError(f"toy world: jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        unknown = sorted(set(self.noise) - set(NOISE_KINDS))
        if unknown:
            raise UserError(
                f"toy world: unknown noise kind(s) {', '.join(unknown)}; "
                f"known: {', '.join(NOISE_KINDS)}"
            )
        if any(not 0.0 <= f <= 1.0 for f in self.noise.values()) or sum(self.noise.values()) > 1:
            raise UserError("toy world: noise fractions must be in [0, 1] and sum to at most 1")
        s = self.sizes
        if not (8 <= s.tiny[0] <= s.tiny[1] < s.clean[0] <= s.clean[1]):
            raise UserError(f"toy world: need 8 <= tiny sides < clean sides, got {s}")
        if not (s.extreme_ratio[0] > 3.0 and s.extreme_ratio[0] <= s.extreme_ratio[1]):
            raise UserError("toy world: extreme aspect ratios must be > 3 (DataComp's limit)")
        if s.extreme_short[0] < 8 or s.extreme_short[0] > s.extreme_short[1]:
            raise UserError(f"toy world: bad extreme_short range {s.extreme_short}")
        object.__setattr__(self, "noise", dict(sorted(self.noise.items())))

    @classmethod
    def for_scale(cls, scale: str, **overrides: Any) -> ToyWorldConfig:
        """The config of a named scale ("small" for tests and CI, "full" for the demo)."""
        if scale not in SCALES:
            raise UserError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
        return cls(**{**SCALES[scale], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Every field that shapes the output (``workers`` does not, so it is left out)."""
        fields = asdict(self) | {"noise": dict(self.noise)}
        del fields["workers"]
        return fields


@dataclass(frozen=True)
class ToyWorld:
    """A written toy world: where its parts are and what is in them."""

    root: Path
    config: ToyWorldConfig
    counts: dict[str, int]  # samples per split
    pool_kinds: dict[str, int]  # POOL samples per kind ("clean" and each noise kind)

    @property
    def hq(self) -> Path:
        return self.root / "hq"

    @property
    def pool_files(self) -> Path:
        return self.root / POOL_FILES

    @property
    def pool_index(self) -> Path:
        return self.root / POOL_INDEX

    @property
    def pool_labels(self) -> Path:
        return self.root / POOL_LABELS

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "counts": dict(self.counts),
            "pool_kinds": dict(self.pool_kinds),
            "classes": len(CLASSES),
        }

    def text(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in self.pool_kinds.items())
        return (f"toy world in {self.root}: hq {self.counts['hq']}, pool {self.counts['pool']} "
                f"({kinds}), eval {self.counts['eval']} images of {len(CLASSES)} classes")


def kind_counts(pool_size: int, noise: Mapping[str, float]) -> dict[str, int]:
    """Samples per kind: each noise kind gets its fraction of ``pool_size`` (largest
    remainders round), the rest is clean."""
    exact = {kind: pool_size * fraction for kind, fraction in noise.items()}
    counts = {kind: math.floor(value) for kind, value in exact.items()}
    wanted = min(pool_size, round(sum(exact.values())))
    by_remainder = sorted(exact, key=lambda k: (-(exact[k] - counts[k]), k))
    for kind in by_remainder[: max(0, wanted - sum(counts.values()))]:
        counts[kind] += 1
    return {"clean": pool_size - sum(counts.values()), **counts}


def assign_kinds(config: ToyWorldConfig) -> tuple[list[str], list[int | None]]:
    """The kind of every POOL index and, for near-duplicates, the clean index they copy."""
    counts = kind_counts(config.pool_size, config.noise)
    kinds = np.array([kind for kind in SAMPLE_KINDS for _ in range(counts.get(kind, 0))])
    rng = sample_rng(config.seed, SPLIT_IDS["pool"], ASSIGN_STREAM)
    kinds = kinds[rng.permutation(len(kinds))]
    clean = np.flatnonzero(kinds == "clean")
    sources: list[int | None] = [None] * len(kinds)
    for index in np.flatnonzero(kinds == "near_duplicate"):
        if len(clean):
            sources[int(index)] = int(clean[int(rng.integers(len(clean)))])
    return [str(k) for k in kinds], sources


def _pool_chunk(
    config: ToyWorldConfig, indices: list[int], kinds: list[str], sources: list[int | None]
) -> list[PoolItem]:
    """Generate POOL samples ``indices`` (a top-level function, so worker processes run it)."""
    items = []
    for index, kind, source in zip(indices, kinds, sources, strict=True):
        ctx = PoolContext(
            seed=config.seed,
            index=index,
            sizes=config.sizes,
            source=source,
            pool_size=config.pool_size,
            jpeg_quality=config.jpeg_quality,
        )
        items.append(make_pool_item(kind, ctx))
    return items


def _hq_chunk(config: ToyWorldConfig, indices: list[int]) -> list[tuple[int, str, bytes, int, int]]:
    """Generate HQ pairs ``indices``: (index, caption, jpeg, width, height)."""
    out = []
    for i in indices:
        scene, caption = clean_base(config.seed, SPLIT_IDS["hq"], i, config.sizes.clean)
        data = encode_jpeg(render(scene), config.jpeg_quality)
        out.append((i, caption, data, scene.width, scene.height))
    return out


def _parallel(
    fn: Callable[..., list[Any]], args: list[tuple], workers: int, bar: tqdm
) -> Iterator[Any]:
    """``fn(*a)`` for every ``a`` in ``args``, results flattened in order, in ``workers``
    processes (spawned: no fork of a process that may hold threads)."""
    if workers == 1:
        for arg in args:
            items = fn(*arg)
            bar.update(len(items))
            yield from items
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as executor:
        for items in executor.map(fn, *zip(*args, strict=True)):
            bar.update(len(items))
            yield from items


def _chunks(n: int, size: int = _CHUNK) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _pool_items(
    config: ToyWorldConfig, kinds: list[str], sources: list[int | None], progress: bool
) -> Iterator[PoolItem]:
    """All POOL samples in index order."""
    args = [
        (config, c, [kinds[i] for i in c], [sources[i] for i in c]) for c in _chunks(len(kinds))
    ]
    with tqdm(total=len(kinds), desc="toy world: pool", unit="img", disable=not progress) as bar:
        yield from _parallel(_pool_chunk, args, config.workers, bar)


def _write_pool(root: Path, config: ToyWorldConfig, progress: bool) -> dict[str, int]:
    kinds, sources = assign_kinds(config)
    files = root / POOL_FILES
    files.mkdir()
    rows: dict[str, list[Any]] = {
        "path": [], "caption": [], "label": [], "detail": [], "true_class": [],
        "class_name": [], "source_path": [], "width": [], "height": [], "bytes": [],
    }  # fmt: skip
    for index, item in enumerate(_pool_items(config, kinds, sources, progress)):
        name = f"{index:06d}.jpg"
        (files / name).write_bytes(item.data)
        rows["path"].append(name)
        rows["caption"].append(item.caption)
        rows["label"].append(item.label)
        rows["detail"].append(item.detail)
        rows["true_class"].append(item.true_class)
        rows["class_name"].append(CLASSES[item.true_class])
        rows["source_path"].append(None if item.source is None else f"{item.source:06d}.jpg")
        rows["width"].append(item.width)
        rows["height"].append(item.height)
        rows["bytes"].append(len(item.data))
    index_table = pa.table({"path": rows["path"], "caption": rows["caption"]})
    pq.write_table(index_table, root / POOL_INDEX)
    labels = pa.table({
        **{k: rows[k] for k in ("path", "caption", "label", "detail")},
        "true_class": pa.array(rows["true_class"], pa.int32()),
        "class_name": rows["class_name"],
        "source_path": pa.array(rows["source_path"], pa.string()),
        "width": pa.array(rows["width"], pa.int32()),
        "height": pa.array(rows["height"], pa.int32()),
        "bytes": pa.array(rows["bytes"], pa.int64()),
    })  # fmt: skip
    pq.write_table(labels, root / POOL_LABELS)
    return dict(Counter(kinds))


def _write_hq(root: Path, config: ToyWorldConfig, progress: bool) -> None:
    """Clean pairs as img2dataset webdataset shards (``hq/NNNNN.tar``, ``.parquet``, stats)."""
    hq = root / "hq"
    hq.mkdir()
    args = [(config, c) for c in _chunks(config.hq_size, config.hq_shard_size)]
    with tqdm(total=config.hq_size, desc="toy world: hq", unit="img", disable=not progress) as bar:
        pairs = iter(_parallel(_hq_chunk, args, config.workers, bar))
        for shard_id, (_, indices) in enumerate(args):
            samples = []
            for position in range(len(indices)):
                _, caption, data, width, height = next(pairs)
                key = f"{shard_id:05d}{position:04d}"
                samples.append(ShardSample(
                    key=key, url=HQ_URL.format(key=key), caption=caption, image=data,
                    width=width, height=height, original_width=width, original_height=height,
                    sha256=_sha256(data),
                ))  # fmt: skip
            write_img2dataset_shard(hq, f"{shard_id:05d}", samples)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_eval(root: Path, config: ToyWorldConfig) -> int:
    """``eval/``: eval_per_class images of every class, labels.csv, eval.json."""
    eval_dir = root / "eval"
    (eval_dir / "images").mkdir(parents=True)
    split = SPLIT_IDS["eval"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "label"])
    index = 0
    for label, shape in enumerate(CLASSES):
        for _ in range(config.eval_per_class):
            scene, _ = clean_base(config.seed, split, index, config.sizes.clean, shape=shape)
            name = f"images/{index:05d}.jpg"
            (eval_dir / name).write_bytes(encode_jpeg(render(scene), config.jpeg_quality))
            writer.writerow([name, label])
            index += 1
    (eval_dir / "labels.csv").write_text(buffer.getvalue(), encoding="utf-8")
    write_json_atomic(
        eval_dir / "eval.json",
        {"name": "toyworld-eval", "classnames": list(CLASSES), "templates": list(EVAL_TEMPLATES)},
    )
    return index


def _finished(out: Path, config: ToyWorldConfig) -> ToyWorld:
    """The world already in ``out`` when it was made with the same config (``workers`` aside:
    it does not change a byte), else a UserError naming what differs."""
    if not (out / WORLD_FILE).is_file():
        raise UserError(f"{out} exists; use --overwrite to replace it")
    record = read_world_record(out)
    refuse_other_settings(f"toy world {out}", record["config"], config.to_dict(),
                          "use --overwrite to replace it")
    logger.info("toy world %s: made with the same config, reused", out)
    return ToyWorld(root=out, config=config, counts=record["counts"],
                    pool_kinds=record["pool_kinds"])


def write_toy_world(
    out: Path | str, config: ToyWorldConfig, *, overwrite: bool = False, progress: bool = True
) -> ToyWorld:
    """Generate the world into ``out`` (staged beside it and renamed into place when done)."""
    out = Path(out)
    if out.exists() and not overwrite:
        return _finished(out, config)
    if out.exists() and not (out / WORLD_FILE).is_file() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not a toy world; refusing to replace it")
    with staged_directory(out) as stage:
        _write_hq(stage, config, progress)
        pool_kinds = _write_pool(stage, config, progress)
        eval_count = _write_eval(stage, config)
        counts = {"hq": config.hq_size, "pool": config.pool_size, "eval": eval_count}
        write_json_atomic(
            stage / WORLD_FILE,
            {
                "generator": "filter-pool toy world",
                "version": curate.__version__,
                "config": config.to_dict(),
                "counts": counts,
                "pool_kinds": pool_kinds,
                "classes": list(CLASSES),
                "files": {
                    "hq": "hq",
                    "pool_files": POOL_FILES,
                    "pool_index": POOL_INDEX,
                    "pool_labels": POOL_LABELS,
                    "eval": "eval",
                },
            },
        )
    logger.info("wrote toy world %s: %s; pool kinds %s", out, counts, pool_kinds)
    return ToyWorld(root=out, config=config, counts=counts, pool_kinds=pool_kinds)


def read_world_record(world: Path | str) -> dict[str, Any]:
    """The ``world.json`` of a toy world; UserError when ``world`` is not one."""
    path = Path(world) / WORLD_FILE
    if not path.is_file():
        raise UserError(
            f"{world} is not a toy world (no {WORLD_FILE}); make one with "
            "`filter-pool toyworld --out DIR`"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON ({exc})") from exc
