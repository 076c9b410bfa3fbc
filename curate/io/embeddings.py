"""Saved embeddings of a run: ``RUN/embeddings/<name>/part-NNNNN.{image,text}.npy``.

Two stages write them, in one layout: ``score --save-embeddings`` (float16, L2-normalised,
row-aligned with the score part) and ``ingest`` of DataComp metadata with its ``.npz``
(``l14_img`` becomes ``clip_l14/part-NNNNN.image.npy``, ``b32_txt`` ``clip_b32/...text.npy``).
Rows without an embedding (not scored, not downloaded) are NaN. Files are opened memory-mapped
and never unpickled, so a stage streams a pool's embeddings part by part in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from curate.errors import UserError
from curate.io.workspace import RunPaths

KINDS = ("image", "text")


def embedding_names(run: Path, kind: str = "image") -> list[str]:
    """Names under ``RUN/embeddings/`` that hold ``kind`` embeddings."""
    root = RunPaths(Path(run)).root / "embeddings"
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir()
                  if d.is_dir() and any(d.glob(f"part-*.{kind}.npy")))


def how_to_make(run: Path, name: str) -> str:
    """The commands that write embeddings named ``name``."""
    return (f"make them with `filter-pool score {run} --model MODEL --name {name} "
            "--save-embeddings`, or ingest DataComp metadata with its .npz files "
            "(clip_l14, clip_b32)")


@dataclass(frozen=True)
class EmbeddingPart:
    """One pool part's embeddings: its part stem and the file, row-aligned with the pool part."""

    part: str
    path: Path
    rows: int

    def load(self) -> np.ndarray:
        """The part's embeddings, memory-mapped (rows x dim, float16 or float32)."""
        array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        if array.ndim != 2 or array.shape[0] != self.rows or array.dtype.kind != "f":
            raise UserError(f"{self.path}: expected {self.rows} rows of float embeddings, got "
                            f"shape {array.shape} {array.dtype}")
        return array


@dataclass(frozen=True)
class Embeddings:
    """A run's embeddings of one name and kind, one file per pool part."""

    run: Path
    name: str
    kind: str
    parts: tuple[EmbeddingPart, ...]
    dim: int

    @property
    def rows(self) -> int:
        return sum(part.rows for part in self.parts)

    def __iter__(self) -> Iterator[EmbeddingPart]:
        return iter(self.parts)

    def describe(self) -> dict[str, object]:
        """What a stage records about its input (name, kind, dimension, rows)."""
        return {"embeddings": self.name, "embedding_kind": self.kind, "dim": self.dim,
                "rows": self.rows}


def open_embeddings(run: Path | str, name: str, kind: str = "image") -> Embeddings:
    """The run's ``kind`` embeddings named ``name``, checked against every pool part (a file
    per part, the part's row count, one dimension); a one-line error saying what is missing
    and how to make it."""
    if kind not in KINDS:
        raise UserError(f"embedding kind must be one of {', '.join(KINDS)}, got {kind!r}")
    paths = RunPaths(Path(run))
    pool_parts = paths.pool_parts()
    if not pool_parts:
        raise UserError(f"run {paths.root} has no pool table (pool/part-*.parquet)")
    directory = paths.embeddings_dir(name)
    missing = [p.stem for p in pool_parts if not (directory / f"{p.stem}.{kind}.npy").is_file()]
    if missing:
        have = embedding_names(paths.root, kind)
        which = "none" if len(missing) == len(pool_parts) else f"{len(missing)} parts missing, " \
            f"first {missing[0]}"
        raise UserError(
            f"run {paths.root} has no {kind} embeddings named '{name}' ({which}; the run has "
            f"{', '.join(have) or 'no embeddings'}); {how_to_make(paths.root, name)}")
    parts = tuple(EmbeddingPart(p.stem, directory / f"{p.stem}.{kind}.npy",
                                pq.ParquetFile(p).metadata.num_rows) for p in pool_parts)
    dims = {part.load().shape[1] for part in parts}
    if len(dims) != 1:
        raise UserError(f"{directory}: parts have different dimensions {sorted(dims)}")
    return Embeddings(paths.root, name, kind, parts, dims.pop())


def normalised(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``array`` as float32 rows of unit length, and a mask of the rows that are usable (finite
    and non-zero); unusable rows come back as zeros."""
    values = np.asarray(array, dtype=np.float32)
    usable = np.isfinite(values).all(axis=1)
    norms = np.linalg.norm(np.where(usable[:, None], values, 0.0), axis=1)
    usable &= norms > 0
    out = np.zeros_like(values)
    out[usable] = values[usable] / norms[usable, None]
    return out, usable
