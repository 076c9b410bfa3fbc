"""SemDeDup (Abbas et al. 2023; facebookresearch/SemDeDup): spherical k-means over the
L2-normalised image embeddings, then within each cluster, members ranked best first, each
member's similarity is its largest cosine to a higher-ranked member of its cluster (SemDeDup's
``max(triu(X X^T, 1), dim=0)``); it is a duplicate when that is ``> 1 - eps``.

Here members are ranked by the dedup representative rule (not by distance to the centroid).
Embeddings are read part by part (memory-mapped); the pairwise block of a cluster is computed
in chunks of rows, so memory beyond the k-means input is one chunk x cluster size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from curate.io.embeddings import Embeddings, normalised

logger = logging.getLogger(__name__)

EPS_TABLE = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
CHUNK_ROWS = 1024  # rows of a cluster's similarity block computed at once


@dataclass(frozen=True)
class SemanticResult:
    """Per run row (all parts concatenated): usable, cluster (-1 if not), similarity to the
    most similar higher-ranked member of its cluster (NaN for the best of a cluster), and the
    row index of that member (-1 if none)."""

    usable: np.ndarray
    cluster: np.ndarray
    similarity: np.ndarray
    nearest: np.ndarray
    clusters: int

    def removed(self, eps: float) -> int:
        """How many rows are duplicates at ``eps``."""
        return int((self.similarity > 1 - eps).sum())

    def eps_table(self) -> list[dict[str, float | int]]:
        return [{"eps": eps, "removed": self.removed(eps)} for eps in EPS_TABLE]


def load_usable(embeddings: Embeddings) -> tuple[np.ndarray, np.ndarray]:
    """(usable mask over every row, float32 unit rows of the usable ones), read part by part."""
    masks, rows = [], []
    for part in embeddings:
        values, usable = normalised(part.load())
        masks.append(usable)
        rows.append(values[usable])
    mask = np.concatenate(masks) if masks else np.zeros(0, bool)
    return mask, (np.concatenate(rows) if rows else np.zeros((0, embeddings.dim), np.float32))


def kmeans_assign(vectors: np.ndarray, clusters: int, niter: int, seed: int) -> np.ndarray:
    """faiss spherical k-means (fixed seed), each vector's centroid of largest inner product."""
    import faiss

    k = min(clusters, len(vectors))
    if k <= 1:
        return np.zeros(len(vectors), dtype=np.int64)
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=niter, seed=seed, spherical=True,
                          verbose=False, max_points_per_centroid=max(256, len(vectors)))
    kmeans.cp.min_points_per_centroid = 1  # small pools: no warning, the same clustering
    kmeans.train(vectors)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(kmeans.centroids)
    _, assigned = index.search(vectors, 1)
    return assigned[:, 0].astype(np.int64)


def cluster_similarity(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For unit rows ordered best first: each row's largest cosine to an earlier row and
    which (NaN and -1 for the first row), in chunks of CHUNK_ROWS rows."""
    m = len(members)
    best = np.full(m, np.nan, dtype=np.float32)
    which = np.full(m, -1, dtype=np.int64)
    for start in range(1, m, CHUNK_ROWS):
        stop = min(m, start + CHUNK_ROWS)
        block = members[start:stop] @ members[:stop].T  # rows start..stop vs earlier rows
        rows = np.arange(start, stop)
        block[np.arange(stop)[None, :] >= rows[:, None]] = -np.inf
        which[start:stop] = block.argmax(axis=1)
        best[start:stop] = block[np.arange(stop - start), which[start:stop]]
    return best, which


def semdedup(embeddings: Embeddings, rank: np.ndarray, clusters: int, niter: int = 20,
             seed: int = 0) -> SemanticResult:
    """Cluster the usable rows and find each one's most similar higher-ranked cluster mate."""
    usable, vectors = load_usable(embeddings)
    n = len(usable)
    rows = np.flatnonzero(usable)
    assigned = kmeans_assign(vectors, clusters, niter, seed) if len(rows) else np.zeros(0, int)
    cluster = np.full(n, -1, dtype=np.int64)
    cluster[rows] = assigned
    similarity = np.full(n, np.nan, dtype=np.float32)
    nearest = np.full(n, -1, dtype=np.int64)
    order = np.lexsort((rank[rows], assigned))  # by cluster, then best first
    starts = np.flatnonzero(np.r_[True, assigned[order][1:] != assigned[order][:-1]]) \
        if len(order) else np.zeros(0, int)
    for start, stop in zip(starts, np.r_[starts[1:], len(order)], strict=True):
        local = order[start:stop]
        best, which = cluster_similarity(vectors[local])
        similarity[rows[local]] = best
        nearest[rows[local]] = np.where(which >= 0, rows[local][np.maximum(which, 0)], -1)
    used = int(len(np.unique(assigned))) if len(assigned) else 0
    logger.info("semdedup: %d usable rows in %d clusters", len(rows), used)
    return SemanticResult(usable, cluster, similarity, nearest, used)
