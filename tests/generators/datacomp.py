"""Deterministic DataComp-style metadata (parquet + npz) for tests and benchmarks.

Each file ``<32 hex>.parquet`` holds DataComp's columns ``uid, url, text, original_width,
original_height, clip_b32_similarity_score, clip_l14_similarity_score, face_bboxes, sha256``;
with ``with_npz`` a same-named ``.npz`` holds ``b32_img, b32_txt, l14_img, l14_txt``
(float16, unit-norm rows, row-aligned). Each text embedding is built so that its cosine with
the image embedding is the row's similarity score (up to float16 rounding). Everything is
vectorised (numpy, pyarrow) and generated one file at a time; the same arguments give the same
files. uids are unique across the whole generated pool.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# byte value -> its two hex characters, as one uint16 (a round trip, so any byte order works)
_HEX_LUT16 = np.stack([_HEX[np.arange(256) >> 4], _HEX[np.arange(256) & 15]], axis=1).view(
    np.uint16).ravel()
_DOMAINS = (
    "images.shop-example.com", "cdn.news-example.org", "media.blog-example.net",
    "i.photos-example.com", "static.travel-example.org", "img.market-example.com",
    "uploads.recipes-example.net", "pics.forum-example.org",
)
_PATHS = ("/images/", "/uploads/2021/05/", "/p/", "/media/catalog/product/", "/wp-content/")
_EXTENSIONS = (".jpg", ".jpg", ".jpg", ".jpeg", ".png", ".webp", ".jpg?w=640")
_VOCABULARY = (
    "a photo of the red blue green small large old new vintage modern wooden metal dog cat "
    "bird car house tree beach mountain city street woman man child family wedding dress shirt "
    "shoes bag table chair kitchen garden flower cake coffee logo icon vector illustration "
    "stock image background pattern texture sunset night winter summer 2019 2020 hd free "
    "sale best cheap with and in on for at by from view close up portrait landscape art print "
    "poster book cover t-shirt design handmade café über naïve 東京 北京 Москва"
)
_WORDS = tuple(_VOCABULARY.split())
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_EMBED_CHUNK_ROWS = 16_384


def _hex_strings(raw: np.ndarray) -> pa.StringArray:
    """Rows of bytes (``[n, k]`` uint8) as lowercase hex strings of length ``2k``, zero-copy."""
    n, k = raw.shape
    data = np.take(_HEX_LUT16, raw).view(np.uint8).reshape(-1)
    offsets = np.arange(0, 2 * k * (n + 1), 2 * k, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on uint64, so distinct inputs stay distinct."""
    z = values + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uids(rng: np.random.Generator, first_row: int, n: int, seed: int) -> pa.StringArray:
    """Unique uids: mixed global row number (first 16 hex) and random bytes (last 16)."""
    rows = np.arange(first_row, first_row + n, dtype=np.uint64) ^ np.uint64(seed & (2**64 - 1))
    head = _mix64(rows).astype(">u8").view(np.uint8).reshape(n, 8)
    tail = np.frombuffer(rng.bytes(8 * n), dtype=np.uint8).reshape(n, 8)
    return _hex_strings(np.concatenate([head, tail], axis=1))


def _pick(rng: np.random.Generator, choices: tuple[str, ...], n: int) -> pa.Array:
    return pa.array(choices, pa.string()).take(rng.integers(0, len(choices), n))


def _captions(rng: np.random.Generator, n: int) -> pa.Array:
    """Captions of varied length: mostly short, some medium, a few long."""
    kind = rng.random(n)
    lengths = np.where(kind < 0.6, rng.integers(1, 9, n),
                       np.where(kind < 0.95, rng.integers(9, 26, n), rng.integers(26, 81, n)))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    words = pa.array(_WORDS, pa.string()).take(rng.integers(0, len(_WORDS), int(offsets[-1])))
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), words), " ")


def _face_bboxes(rng: np.random.Generator, n: int) -> pa.Array:
    """list<list<float64>>: mostly empty, else one to three [x0, y0, x1, y1] boxes in [0, 1]."""
    counts = rng.choice(4, size=n, p=[0.85, 0.1, 0.035, 0.015])
    boxes = int(counts.sum())
    corner = rng.uniform(0.0, 0.8, (boxes, 2))
    size = rng.uniform(0.05, 0.2, (boxes, 2))
    values = pa.array(np.concatenate([corner, corner + size], axis=1).reshape(-1))
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, 4 * boxes + 1, 4, dtype=np.int32)),
                                     values)
    outer_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(outer_offsets), inner)


def _scores(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlated B/32 and L/14 similarity scores in [-0.1, 0.5], float32."""
    b32 = rng.normal(0.27, 0.05, n)
    l14 = 0.24 + 0.8 * (b32 - 0.27) + rng.normal(0.0, 0.03, n)
    return (np.clip(b32, -0.1, 0.5).astype(np.float32),
            np.clip(l14, -0.1, 0.5).astype(np.float32))


def _metadata_table(rng: np.random.Generator, first_row: int, n: int, seed: int) -> pa.Table:
    uids = _uids(rng, first_row, n, seed)
    url = pc.binary_join_element_wise(
        "https://", _pick(rng, _DOMAINS, n), _pick(rng, _PATHS, n),
        pc.utf8_slice_codeunits(uids, 0, 20), _pick(rng, _EXTENSIONS, n), "",
    )
    width = np.clip(rng.lognormal(6.2, 0.6, n), 16, 10_000).astype(np.int64)
    aspect = np.exp(rng.normal(-0.1, 0.35, n))
    height = np.clip(width * aspect, 16, 10_000).astype(np.int64)
    b32, l14 = _scores(rng, n)
    sha256 = _hex_strings(np.frombuffer(rng.bytes(32 * n), dtype=np.uint8).reshape(n, 32))
    return pa.table(
        {
            "uid": uids,
            "url": url,
            "text": _captions(rng, n),
            "original_width": width,
            "original_height": height,
            "clip_b32_similarity_score": b32,
            "clip_l14_similarity_score": l14,
            "face_bboxes": _face_bboxes(rng, n),
            "sha256": sha256,
        }
    )


def _unit(rows: np.ndarray) -> np.ndarray:
    rows /= np.sqrt(np.einsum("ij,ij->i", rows, rows))[:, None]
    return rows


def _random_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Random unit rows (uniform in a cube, then normalised: fast, and enough for tests)."""
    rows = rng.random((n, dim), dtype=np.float32)
    rows -= 0.5
    return _unit(rows)


def _write_member(archive: zipfile.ZipFile, name: str, shape: tuple[int, int],
                  chunks: Iterator[np.ndarray]) -> None:
    """One ``.npy`` member of the npz, written chunk by chunk."""
    info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
    with archive.open(info, "w", force_zip64=True) as handle:
        header = {"descr": "<f2", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(handle, header)
        for chunk in chunks:
            handle.write(memoryview(chunk.astype("<f2")).cast("B"))


def _embedding_chunks(seed: tuple[int, ...], scores: np.ndarray, dim: int,
                      text: bool) -> Iterator[np.ndarray]:
    """Image rows, or text rows ``s * image + sqrt(1 - s^2) * u`` (``u`` unit, orthogonal to
    the image row, so the pair's cosine is the score ``s``); a seeded generator per chunk lets
    the text pass rebuild the image rows instead of holding them."""
    for number, start in enumerate(range(0, len(scores), _EMBED_CHUNK_ROWS)):
        cos = scores[start:start + _EMBED_CHUNK_ROWS, None].astype(np.float32)
        rng = np.random.default_rng([*seed, number])
        image = _random_rows(rng, len(cos), dim)
        if not text:
            yield image
            continue
        noise = _random_rows(rng, len(cos), dim)
        noise -= np.einsum("ij,ij->i", noise, image)[:, None] * image
        noise = _unit(noise)
        noise *= np.sqrt(1 - cos**2)
        image *= cos
        image += noise
        yield image


def _write_npz(path: Path, seed: tuple[int, ...], scores: dict[str, np.ndarray],
               dims: dict[str, int]) -> None:
    """``{prefix}_img`` and ``{prefix}_txt`` per model, streamed (bounded memory)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for number, (prefix, dim) in enumerate(dims.items()):
            shape = (len(scores[prefix]), dim)
            for kind, text in (("img", False), ("txt", True)):
                chunks = _embedding_chunks((*seed, number), scores[prefix], dim, text)
                _write_member(archive, f"{prefix}_{kind}", shape, chunks)


def write_datacomp_metadata(
    out_dir: Path,
    *,
    num_files: int = 3,
    rows_per_file: int = 100,
    seed: int = 0,
    with_npz: bool = True,
    embed_dim_b32: int = 512,
    embed_dim_l14: int = 768,
) -> list[Path]:
    """Write ``num_files`` metadata parquets (and npz); return the parquet paths, sorted."""
    if num_files < 0 or rows_per_file < 0:
        raise ValueError("num_files and rows_per_file must not be negative")
    if rows_per_file * 64 >= 2**31:
        raise ValueError("rows_per_file must stay below 33,554,432 (string offsets are int32)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(num_files):
        stem = hashlib.sha256(f"datacomp-synthetic:{seed}:{index}".encode()).hexdigest()[:32]
        rng = np.random.default_rng([seed, index, 0])
        table = _metadata_table(rng, index * rows_per_file, rows_per_file, seed)
        path = out_dir / f"{stem}.parquet"
        pq.write_table(table, path, use_dictionary=False)  # no low-cardinality columns
        if with_npz:
            scores = {
                "b32": table.column("clip_b32_similarity_score").to_numpy(),
                "l14": table.column("clip_l14_similarity_score").to_numpy(),
            }
            del table
            _write_npz(path.with_suffix(".npz"), (seed, index, 1), scores,
                       {"b32": embed_dim_b32, "l14": embed_dim_l14})
        paths.append(path)
        logger.debug("wrote %s (%d rows)", path.name, rows_per_file)
    return sorted(paths)
