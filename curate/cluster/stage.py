"""DataComp's image-based clustering filter as a derived table (``filter-pool cluster``).

Matches mlfoundations/datacomp 4a8df19 (``baselines/apply_filter.py``
``load_uids_with_image_filter`` / ``image_filter_helper``, ``baselines/image_based_clustering.py``):

1. caption pre-filter: English, more than 1 fastText token, more than 5 characters
   (``caption.py``);
2. centroids: DataComp's published file (``--centroids``), or faiss k-means (20 iterations,
   ``--seed``, no sub-sampling) over the L/14 image embeddings of the samples that pass the
   caption filter, optionally a ``--sample-ratio`` draw with replacement per part as DataComp's
   ``np.random.choice`` (``kmeans.py``);
3. targets: the unique nearest centroids (largest dot product) of the reference image
   embeddings (ImageNet-1k train in DataComp; ``--reference``), or a saved id set
   (``--target-clusters``);
4. each sample's centroid = largest dot product with its float32 embedding (``assign.py``);
   keep = caption passes and its centroid is a target.

Writes ``RUN/scores/<name>/`` (``<name>_cluster``, ``_keep``, ``_reason``, ``_similarity``,
status) and ``RUN/clusters/<name>/centroids.npy`` (computed ones) and ``targets.npy`` with their
JSON records; a rerun with the same settings reuses the table, and computed centroids are
reused by any run of the same embeddings, clusters, seed, sample ratio and language model.
Embeddings stream part by part in chunks; only k-means holds its training rows in memory.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate.cluster.assign import nearest_centroids, target_clusters
from curate.cluster.caption import REASONS, CaptionFilter
from curate.cluster.datacomp_files import load_centroids, load_reference, load_targets
from curate.cluster.kmeans import NITER, train_centroids
from curate.errors import UserError
from curate.io.embeddings import EmbeddingPart, open_embeddings
from curate.io.lock import run_output, writes
from curate.io.pool_table import read_pool_part
from curate.io.statuses import MISSING_EMBEDDING
from curate.io.workspace import (
    SCORER_NAME,
    RunPaths,
    atomic_path,
    check_name,
    file_sha256,
    write_json_atomic,
)
from curate.tables.derived import finished_table, read_table_record, write_derived_table

logger = logging.getLogger(__name__)

STAGE = "cluster"
NOT_TARGET = "cluster: not a target cluster"
CHUNK_ROWS = 65_536  # embedding rows read and assigned at a time


@dataclass(frozen=True)
class ClusterConfig:
    """One image-based clustering table: centroids (file or k-means) and targets (reference
    embeddings or a saved id set)."""

    run: Path
    name: str = "image_based"
    embeddings: str = "clip_l14"
    centroids: Path | None = None
    clusters: int | None = None
    seed: int = 0
    sample_ratio: float | None = None
    reference: tuple[Path, ...] = ()
    target_clusters: Path | None = None
    fasttext_model: Path | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        object.__setattr__(self, "reference", tuple(Path(p) for p in self.reference))
        for key in ("centroids", "target_clusters", "fasttext_model"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, Path(getattr(self, key)))
        check_name(self.name, "table", SCORER_NAME)
        if (self.centroids is None) == (self.clusters is None):
            raise UserError("give exactly one of --centroids FILE (e.g. DataComp's "
                            "small_centroids_l14.pt) or --clusters K (k-means over the pool)")
        if self.clusters is not None and self.clusters < 1:
            raise UserError(f"--clusters must be at least 1, got {self.clusters}")
        if self.sample_ratio is not None:
            if self.clusters is None:
                raise UserError("--sample-ratio applies to k-means (--clusters), not --centroids")
            if not 0 < self.sample_ratio <= 1:
                raise UserError(f"--sample-ratio must be in (0, 1], got {self.sample_ratio}")
        if self.seed < 0:
            raise UserError(f"--seed must not be negative, got {self.seed}")
        if bool(self.reference) == (self.target_clusters is not None):
            raise UserError("give exactly one of --reference FILE (reference image embeddings, "
                            "e.g. ImageNet-1k train) or --target-clusters FILE (centroid ids)")
        if self.fasttext_model is not None and not self.fasttext_model.is_file():
            raise UserError(f"--fasttext-model {self.fasttext_model} does not exist")

    @property
    def clusters_dir(self) -> Path:
        return RunPaths(self.run).root / "clusters" / self.name


@dataclass(frozen=True)
class ClusterSummary:
    """What ``filter-pool cluster`` did."""

    name: str
    path: Path
    rows: int
    clusters: int
    targets: int
    caption_passed: int
    missing_embedding: int
    kept: int
    centroids: str  # "computed", "reused" or the file given
    seconds: float
    reused: bool = False
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "rows": self.rows,
                "clusters": self.clusters, "targets": self.targets,
                "caption_passed": self.caption_passed, "missing_embedding": self.missing_embedding,
                "kept": self.kept, "centroids": self.centroids,
                "seconds": round(self.seconds, 3), "reused": self.reused,
                "outputs": dict(self.outputs)}

    def text(self) -> str:
        share = 100 * self.kept / self.rows if self.rows else 0.0
        again = " (reused: same settings)" if self.reused else ""
        return (f"'{self.name}': kept {self.kept} of {self.rows} ({share:.2f}%); "
                f"{self.targets} target clusters of {self.clusters} ({self.centroids} "
                f"centroids); caption filter passed {self.caption_passed}; "
                f"{self.missing_embedding} without embedding; {self.seconds:.1f}s{again} -> "
                f"{self.path}")


def _file(path: Path) -> dict[str, str]:
    return {"path": str(path), "sha256": file_sha256(path)}


def _language(config: ClusterConfig) -> Any:
    return _file(config.fasttext_model) if config.fasttext_model else "py3langid"


def _centroid_settings(config: ClusterConfig) -> dict[str, Any]:
    if config.centroids is not None:
        return {"file": _file(config.centroids)}
    return {"embeddings": config.embeddings, "clusters": config.clusters, "seed": config.seed,
            "sample_ratio": config.sample_ratio, "niter": NITER, "language": _language(config)}


def _settings(config: ClusterConfig) -> dict[str, Any]:
    targets = ({"reference": [_file(p) for p in config.reference]} if config.reference
               else {"file": _file(config.target_clusters)})  # type: ignore[arg-type]
    return {"embeddings": config.embeddings, "centroids": _centroid_settings(config),
            "targets": targets, "language": _language(config)}


def embedding_chunks(part: EmbeddingPart) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(start row, float32 rows, usable mask) of a part, ``CHUNK_ROWS`` at a time; a row is
    usable when finite and not all zero (missing embeddings are NaN)."""
    array = part.load()
    for start in range(0, part.rows, CHUNK_ROWS):
        rows = np.asarray(array[start:start + CHUNK_ROWS], dtype=np.float32)
        usable = np.isfinite(rows).all(axis=1) & (rows != 0).any(axis=1)
        yield start, rows, usable


def _training_rows(parts: list[EmbeddingPart], passed: list[np.ndarray],
                   config: ClusterConfig) -> np.ndarray:
    """The rows k-means trains on: caption passes and embedding usable, in pool order; with
    ``sample_ratio`` a draw of ``int(n * ratio)`` rows with replacement per part (DataComp's
    ``np.random.choice``), seeded by (seed, part number)."""
    gathered = []
    for number, (part, keep) in enumerate(zip(parts, passed, strict=True)):
        rows = [chunk[keep[start:start + len(chunk)] & usable]
                for start, chunk, usable in embedding_chunks(part)]
        block = np.concatenate(rows) if rows else np.empty((0, 0), np.float32)
        if config.sample_ratio is not None and len(block):
            rng = np.random.default_rng([config.seed, number])
            block = block[rng.choice(len(block), size=int(len(block) * config.sample_ratio))]
        if len(block):
            gathered.append(block)
    if not gathered:
        raise UserError("no sample passes the caption filter with an embedding: nothing to "
                        "cluster")
    return np.concatenate(gathered)


def _reused_centroids(config: ClusterConfig, settings: dict[str, Any]) -> np.ndarray | None:
    record = config.clusters_dir / "centroids.json"
    path = config.clusters_dir / "centroids.npy"
    if not (record.is_file() and path.is_file()):
        return None
    try:
        if json.loads(record.read_text()).get("settings") != json.loads(json.dumps(settings)):
            return None
    except (OSError, json.JSONDecodeError):
        return None
    return np.load(path, allow_pickle=False)


def _save_array(path: Path, array: np.ndarray, record: dict[str, Any]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    write_json_atomic(path.with_suffix(".json"), record)


def _part_table(config: ClusterConfig, pool_part: Path, part: EmbeddingPart,
                codes: np.ndarray, centroids: np.ndarray, targets: np.ndarray,
                counts: dict[str, int]) -> pa.Table:
    n = part.rows
    cluster = np.zeros(n, dtype=np.int32)
    similarity = np.zeros(n, dtype=np.float32)
    present = np.zeros(n, dtype=bool)
    for start, rows, usable in embedding_chunks(part):
        ids, best = nearest_centroids(rows[usable], centroids)
        at = start + np.flatnonzero(usable)
        cluster[at], similarity[at], present[at] = ids, best, True
    target = np.isin(cluster, targets) & present
    keep = (codes == 0) & target
    reason = np.array(REASONS, dtype=object)[codes]
    reason[(codes == 0) & ~target] = NOT_TARGET
    reason[~present] = "no embedding"
    missing = ~present
    counts["caption_passed"] += int((codes == 0).sum())
    counts["missing_embedding"] += int(missing.sum())
    counts["kept"] += int(keep.sum())
    name = config.name
    uids = read_pool_part(pool_part, ["uid"]).column("uid")
    return pa.table({
        "uid": uids,
        f"{name}_cluster": pa.array(cluster, pa.int32(), mask=missing),
        f"{name}_keep": pa.array(keep, pa.bool_(), mask=missing),
        f"{name}_reason": pa.array(reason, pa.string()),
        f"{name}_similarity": pa.array(similarity, pa.float32(), mask=missing),
        "status": pa.array(np.where(missing, MISSING_EMBEDDING, "ok"), pa.string()),
        "error": pa.array(np.where(missing, f"no '{config.embeddings}' image embedding", None),
                          pa.string()),
    })


def _from_record(config: ClusterConfig) -> ClusterSummary:
    record = read_table_record(config.run, config.name) or {}
    summary = dict(record.get("summary", {}))
    summary.update(reused=True, path=Path(summary.get("path", "")), seconds=0.0)
    return ClusterSummary(**summary)


@writes(lambda c: run_output(c.run, f"scores/{c.name}", f"cluster table '{c.name}'"))
def cluster_run(config: ClusterConfig) -> ClusterSummary:
    """Write the image-based clustering table of ``config.run`` (see the module docs)."""
    started = time.perf_counter()
    paths = RunPaths(config.run)
    paths.read_run()
    settings = _settings(config)
    if finished_table(config.run, config.name, STAGE, settings, config.overwrite):
        return _from_record(config)
    embeddings = open_embeddings(config.run, config.embeddings, "image")
    parts = list(embeddings)
    pool_parts = paths.pool_parts()
    caption = CaptionFilter(config.fasttext_model)
    codes = [caption.codes(read_pool_part(p, ["text"]).column("text").to_pylist())
             for p in pool_parts]
    logger.info("caption filter: %d of %d pass", sum(int((c == 0).sum()) for c in codes),
                embeddings.rows)
    outputs: dict[str, str] = {}
    if config.centroids is not None:
        centroids = load_centroids(config.centroids, embeddings.dim)
        source = str(config.centroids)
    else:
        centroid_settings = _centroid_settings(config)
        centroids = _reused_centroids(config, centroid_settings)
        source = "reused"
        if centroids is None or centroids.shape != (config.clusters, embeddings.dim):
            rows = _training_rows(parts, [c == 0 for c in codes], config)
            centroids = train_centroids(rows, config.clusters, config.seed)  # type: ignore[arg-type]
            del rows
            source = "computed"
            _save_array(config.clusters_dir / "centroids.npy", centroids,
                        {"settings": centroid_settings, "shape": list(centroids.shape)})
        outputs["centroids"] = str(config.clusters_dir / "centroids.npy")
    if config.reference:
        reference = load_reference(config.reference, embeddings.dim)
        targets = target_clusters(reference, centroids)
        del reference
    else:
        targets = load_targets(config.target_clusters, len(centroids))  # type: ignore[arg-type]
    _save_array(config.clusters_dir / "targets.npy", targets,
                {"settings": settings, "targets": int(len(targets))})
    outputs["targets"] = str(config.clusters_dir / "targets.npy")
    counts = {"caption_passed": 0, "missing_embedding": 0, "kept": 0}
    tables = ((pool.stem, _part_table(config, pool, part, code, centroids, targets, counts))
              for pool, part, code in zip(pool_parts, parts, codes, strict=True))
    target_dir = paths.scores_dir(config.name)
    summary = ClusterSummary(
        name=config.name, path=target_dir, rows=embeddings.rows, clusters=len(centroids),
        targets=len(targets), caption_passed=0, missing_embedding=0, kept=0, centroids=source,
        seconds=0.0, outputs=outputs)

    def record() -> dict[str, Any]:
        done = {**summary.to_dict(), **counts, "seconds": time.perf_counter() - started}
        done.pop("reused")
        return done

    write_derived_table(config.run, config.name, STAGE, settings, tables, _Deferred(record))
    final = record()
    return ClusterSummary(**{**final, "path": target_dir, "reused": False})


class _Deferred(Mapping[str, Any]):
    """The table record's summary, made when ``write_derived_table`` reads it: after it has
    written every part, so the counts are complete."""

    def __init__(self, make: Callable[[], dict[str, Any]]) -> None:
        self._make = make
        self._values: dict[str, Any] | None = None

    def _get(self) -> dict[str, Any]:
        if self._values is None:
            self._values = self._make()
        return self._values

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())
