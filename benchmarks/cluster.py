"""Image-based clustering cost on this machine (faiss CPU): k-means + assignment, and
assignment alone streaming from embedding files.

Two steps, each in a fresh subprocess of this script (so each reports its own peak RSS,
``resource.getrusage(RUSAGE_SELF).ru_maxrss``):

* ``kmeans``: ``--rows`` x ``--dim`` random float32 rows (default 1,000,000 x 768), DataComp's
  k-means (``curate.cluster.kmeans.train_centroids``: faiss, 20 iterations, no sub-sampling)
  to ``--clusters`` centroids, then every row's nearest centroid (``nearest_centroids``);
* ``assign``: ``--assign-rows`` rows (default 12,800,000, DataComp small) written as float16
  ``part-NNNNN.image.npy`` files of ``--part-rows`` rows into a temporary folder (or
  ``--work``), then streamed memory-mapped part by part, ``CHUNK_ROWS`` at a time, exactly as
  ``filter-pool cluster`` reads a run's embeddings, each row assigned to its nearest of
  ``--clusters`` centroids. Peak RSS stays near one chunk's rows and scores, not the pool.

Usage::

    .venv/bin/python benchmarks/cluster.py [--rows 1000000] [--assign-rows 12800000]
        [--dim 768] [--clusters 1000] [--part-rows 500000] [--work DIR] [--keep-data]
        [--steps kmeans,assign] [--json]

The data folder is removed at the end unless ``--keep-data``; with ``--work DIR`` and
``--keep-data`` a second run reuses the files.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _paths  # noqa: F401  (repository root on sys.path)
import numpy as np

from curate.cluster.assign import nearest_centroids
from curate.cluster.kmeans import train_centroids
from curate.cluster.stage import embedding_chunks
from curate.io.embeddings import EmbeddingPart


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _random_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def step_kmeans(args: argparse.Namespace) -> dict[str, float]:
    rows = _random_rows(np.random.default_rng(0), args.rows, args.dim)
    started = time.perf_counter()
    centroids = train_centroids(rows, args.clusters, seed=0)
    trained = time.perf_counter()
    ids, _ = nearest_centroids(rows, centroids)
    done = time.perf_counter()
    assert ids.shape == (args.rows,)
    return {"rows": args.rows, "dim": args.dim, "clusters": args.clusters,
            "kmeans_s": trained - started, "assign_s": done - trained,
            "total_s": done - started, "peak_rss_mib": _peak_rss_mib()}


def _write_parts(folder: Path, rows: int, part_rows: int, dim: int) -> list[EmbeddingPart]:
    parts = []
    for number, start in enumerate(range(0, rows, part_rows)):
        n = min(part_rows, rows - start)
        path = folder / f"part-{number:05d}.image.npy"
        if not path.is_file():
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
            rng = np.random.default_rng([1, number])
            for at in range(0, n, 65_536):
                block = _random_rows(rng, min(65_536, n - at), dim)
                out[at:at + len(block)] = block
            out.flush()
            del out
        parts.append(EmbeddingPart(path.name.split(".")[0], path, n))
    return parts


def step_assign(args: argparse.Namespace) -> dict[str, float]:
    folder = Path(args.data)
    folder.mkdir(parents=True, exist_ok=True)
    written = time.perf_counter()
    parts = _write_parts(folder, args.assign_rows, args.part_rows, args.dim)
    write_s = time.perf_counter() - written
    write_rss = _peak_rss_mib()
    centroids = _random_rows(np.random.default_rng(2), args.clusters, args.dim)
    started = time.perf_counter()
    counts = np.zeros(args.clusters, dtype=np.int64)
    for part in parts:
        for _, rows, usable in embedding_chunks(part):
            ids, _ = nearest_centroids(rows[usable], centroids)
            counts += np.bincount(ids, minlength=args.clusters)
    seconds = time.perf_counter() - started
    assert counts.sum() == args.assign_rows
    return {"rows": args.assign_rows, "dim": args.dim, "clusters": args.clusters,
            "parts": len(parts), "write_s": write_s, "assign_s": seconds,
            "rows_per_s": args.assign_rows / seconds, "peak_rss_mib_after_write": write_rss,
            "peak_rss_mib": _peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--assign-rows", type=int, default=12_800_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--part-rows", type=int, default=500_000)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep-data", action="store_true")
    parser.add_argument("--steps", default="kmeans,assign")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        result = {"kmeans": step_kmeans, "assign": step_assign}[args.step](args)
        print(json.dumps(result))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    data = work / "embeddings"
    results = {}
    try:
        for step in args.steps.split(","):
            print(f"{step} ...", file=sys.stderr)
            command = [sys.executable, __file__, "--step", step, "--data", str(data),
                       *(f"--{k.replace('_', '-')}={getattr(args, k)}"
                         for k in ("rows", "assign_rows", "dim", "clusters", "part_rows"))]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[step] = json.loads(output.strip().splitlines()[-1])
    finally:
        if not args.keep_data:
            shutil.rmtree(data, ignore_errors=True)
            if args.work is None:
                shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for step, figures in results.items():
        print(step + ": " + ", ".join(
            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
