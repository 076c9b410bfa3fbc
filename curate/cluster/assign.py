"""Each row's centroid: the largest dot product, as DataComp's ``get_centroid_ids_gpu``
(mlfoundations/datacomp 4a8df19 ``baselines/apply_filter.py``): ``einsum("ik, jk -> ij",
features.float(), centroids)`` then ``argmax`` (first index on ties). Rows go in chunks sized
so the score block stays under ``BLOCK_FLOATS`` floats, so memory is bounded for any K.
"""

from __future__ import annotations

import numpy as np

BLOCK_FLOATS = 1 << 24  # 64 MiB of float32 scores per chunk


def nearest_centroids(rows: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centroid id int32, dot product float32) per row of ``rows`` ``[n, dim]``."""
    n = rows.shape[0]
    ids = np.empty(n, dtype=np.int32)
    best = np.empty(n, dtype=np.float32)
    step = max(1, BLOCK_FLOATS // max(1, centroids.shape[0]))
    transposed = np.ascontiguousarray(centroids, dtype=np.float32).T
    for start in range(0, n, step):
        chunk = np.asarray(rows[start:start + step], dtype=np.float32)
        scores = chunk @ transposed
        top = scores.argmax(axis=1)
        ids[start:start + step] = top
        best[start:start + step] = scores[np.arange(len(top)), top]
    return ids, best


def target_clusters(reference: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """DataComp's target set: ``unique`` of the reference rows' nearest centroids (int64)."""
    ids, _ = nearest_centroids(reference, centroids)
    return np.unique(ids.astype(np.int64))
