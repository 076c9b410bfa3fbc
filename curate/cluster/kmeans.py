"""k-means centroids as DataComp computes them (``train_kmeans`` in mlfoundations/datacomp
4a8df19 ``baselines/image_based_clustering.py``): ``faiss.Clustering(d, K)`` with
``niter = 20``, ``seed``, ``max_points_per_centroid = 10_000_000`` (so faiss does not
sub-sample) over a flat L2 index (plain, not spherical, k-means), on float32 rows. DataComp
runs it on GPUs; here faiss-cpu's ``IndexFlatL2``.
"""

from __future__ import annotations

import logging

import numpy as np

from curate.errors import UserError

logger = logging.getLogger(__name__)

NITER = 20
MAX_POINTS_PER_CENTROID = 10_000_000


def train_centroids(rows: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """``[clusters, dim]`` float32 centroids of ``rows`` (float32 ``[n, dim]``)."""
    import faiss

    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if rows.shape[0] < clusters:
        raise UserError(f"k-means needs at least as many samples as clusters: {rows.shape[0]} "
                        f"samples pass the caption filter, --clusters is {clusters}")
    dim = rows.shape[1]
    clustering = faiss.Clustering(dim, clusters)
    clustering.niter = NITER
    clustering.seed = seed
    clustering.max_points_per_centroid = MAX_POINTS_PER_CENTROID
    clustering.verbose = logger.isEnabledFor(logging.DEBUG)
    index = faiss.IndexFlatL2(dim)
    logger.info("k-means: %d clusters over %d x %d rows", clusters, rows.shape[0], dim)
    clustering.train(rows, index)
    return faiss.vector_float_to_array(clustering.centroids).reshape(clusters, dim).copy()
