"""Dedup throughput: exact and pHash samples/s over a generated pool of 256 px JPEGs, and the
grouping time alone.

Builds (or reuses) a pool of ``--samples`` real JPEGs in img2dataset layout under the work
directory (smooth random textures, a tenth of them planted copies: byte copies, PNG re-saves,
re-encodes, resizes, crops; tests/generators/duplicates.py), ingests it, then measures:

* hashing: the image-hash stage (decode, sha256, pixel hash, pHash, dHash) over every shard,
  with ``--workers`` (0 in-process), from a cold cache;
* exact and phash end to end: ``dedup_run`` with the cache cleared first (hashing included);
* grouping alone: ``dedup_run --overwrite`` with the cache warm (read pool and hashes, union
  find or hash bands, write the table), and the hash-band search by itself on the pHashes.

Usage::

    .venv/bin/python benchmarks/dedup.py [--samples 10000] [--shards 10] [--workers N]
        [--max-distance 4] [--work DIR] [--json]

Progress goes to stderr; the figures go to stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import _paths  # noqa: F401  (the repository root on sys.path: tests.generators)
import numpy as np
import pyarrow.parquet as pq

from curate.dedup.bands import near_pairs
from curate.dedup.image_hashes import compute_hashes, hashes_dir
from curate.dedup.stage import DedupConfig, dedup_run
from curate.executor import ExecutorConfig
from curate.ingest.stage import IngestConfig, ingest_pool
from tests.generators.duplicates import KINDS, write_duplicate_pool

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / "benchmarks" / "_work" / "dedup"
IMAGE_SIZE = 256


def log(message: str) -> None:
    print(f"[dedup] {message}", file=sys.stderr, flush=True)


def prepare(work: Path, samples: int, shards: int) -> Path:
    """The ingested run of a pool of ``samples`` (reused when it exists at that size)."""
    run = work / f"run-{samples}-{shards}"
    if (run / "run.json").is_file():
        return run
    copies = max(1, samples // (10 * len(KINDS)))
    originals = samples - copies * len(KINDS)
    log(f"writing {samples} JPEGs ({originals} distinct) in {shards} shards")
    pool = write_duplicate_pool(work / f"pool-{samples}-{shards}", originals=originals,
                                copies_per_kind=copies, num_shards=shards, size=IMAGE_SIZE,
                                plant_bad=False)
    ingest_pool(IngestConfig(pool=pool.root, run=run))
    return run


def timed(label: str, fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - started
    log(f"{label}: {seconds:.2f} s")
    return result, seconds


def measure(args: argparse.Namespace) -> dict[str, Any]:
    run = prepare(args.work, args.samples, args.shards)
    executor = ExecutorConfig(workers=args.workers)
    n = args.samples
    figures: dict[str, Any] = {"samples": n, "shards": args.shards, "workers": args.workers,
                               "image_size": IMAGE_SIZE, "max_distance": args.max_distance}

    def dedup(level: str, overwrite: bool) -> Any:
        return dedup_run(DedupConfig(run=run, level=level, max_distance=args.max_distance,
                                     executor=executor, overwrite=overwrite, progress=False))

    shutil.rmtree(hashes_dir(run), ignore_errors=True)
    _, seconds = timed("hashing", lambda: compute_hashes(run, executor, progress=False))
    figures["hash_samples_per_s"] = n / seconds
    for level in ("exact", "phash"):
        shutil.rmtree(hashes_dir(run), ignore_errors=True)
        summary, seconds = timed(f"{level} end to end", lambda lv=level: dedup(lv, True))
        figures[f"{level}_samples_per_s"] = n / seconds
        figures[f"{level}_duplicates"] = summary.duplicates
        _, seconds = timed(f"{level} grouping", lambda lv=level: dedup(lv, True))
        figures[f"{level}_grouping_s"] = seconds
    phash = np.concatenate([pq.read_table(p, columns=["phash"]).column("phash")
                            .drop_null().to_numpy() for p in sorted(hashes_dir(run)
                                                                   .glob("part-*.parquet"))])
    unique = np.unique(phash)
    pairs, seconds = timed("hash bands alone", lambda: near_pairs(unique, args.max_distance))
    figures["bands_s"] = seconds
    brute, seconds = timed("all pairs (numpy, side by side)",
                           lambda: all_pairs(unique, args.max_distance))
    figures["all_pairs_s"] = seconds
    figures["bands_speedup"] = seconds / figures["bands_s"]
    found = {(min(int(a), int(b)), max(int(a), int(b))) for a, b in zip(*pairs, strict=True)}
    assert found == brute, "the hash bands missed or invented a pair"
    return figures


def all_pairs(hashes: np.ndarray, max_distance: int, chunk: int = 1024) -> set[tuple[int, int]]:
    """Every pair of hash indices within ``max_distance``, comparing all pairs (the baseline
    the bands avoid)."""
    found: set[tuple[int, int]] = set()
    for start in range(0, len(hashes), chunk):
        block = np.bitwise_count(hashes[start:start + chunk, None] ^ hashes[None, :])
        rows, cols = np.nonzero(block <= max_distance)
        rows = rows + start
        found |= {(int(a), int(b)) for a, b in zip(rows, cols, strict=True) if a < b}
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--max-distance", type=int, default=4)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = measure(args)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"dedup over {figures['samples']} {IMAGE_SIZE} px JPEGs in {figures['shards']} shards "
          f"(workers {figures['workers']})")
    print(f"  hashing (decode, sha256, pixels, pHash, dHash): "
          f"{figures['hash_samples_per_s']:.0f} samples/s")
    for level in ("exact", "phash"):
        print(f"  {level:<6} end to end {figures[f'{level}_samples_per_s']:.0f} samples/s, "
              f"grouping alone {figures[f'{level}_grouping_s']:.2f} s, "
              f"{figures[f'{level}_duplicates']} duplicates")
    print(f"  hash bands alone (d <= {figures['max_distance']}): {figures['bands_s']:.3f} s; "
          f"all pairs side by side {figures['all_pairs_s']:.3f} s "
          f"({figures['bands_speedup']:.1f}x), the same pairs")


if __name__ == "__main__":
    main()
