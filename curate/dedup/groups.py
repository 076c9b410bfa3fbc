"""Groups of duplicates from edges, and the stated representative rule.

Representative rule: within a group the kept sample is the one with the highest ``prefer``
score; missing scores rank below every score; ties and missing scores are broken by the
smallest uid, then the smallest sample_id (part number << 32 | row in part). The rule uses
nothing but the data, so it is the same across runs and worker counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def rule(prefer: str | None) -> str:
    """The representative rule in words, as ``_table.json`` and the summary state it."""
    ties = "smallest uid, then smallest sample_id (part << 32 | row)"
    if prefer is None:
        return f"{ties} (no --prefer score)"
    return f"highest {prefer} (missing scores last), ties by {ties}"


def rank_order(scores: np.ndarray, uids: np.ndarray, sample_ids: np.ndarray) -> np.ndarray:
    """Row positions in representative order (best first)."""
    scores = np.asarray(scores, dtype=np.float64)
    primary = np.where(np.isnan(scores), np.inf, -scores)
    return np.lexsort((np.asarray(sample_ids), np.asarray(uids, dtype=str), primary))


def ranks(scores: np.ndarray, uids: np.ndarray, sample_ids: np.ndarray) -> np.ndarray:
    """Each row's rank (0 = best) under the representative rule."""
    order = rank_order(scores, uids, sample_ids)
    out = np.empty(len(order), dtype=np.int64)
    out[order] = np.arange(len(order))
    return out


class UnionFind:
    """Disjoint sets over 0..n-1 (path halving, union by smaller root index)."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return int(x)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def union_pairs(self, left: np.ndarray, right: np.ndarray) -> None:
        for a, b in zip(left.tolist(), right.tolist(), strict=True):
            self.union(a, b)

    def roots(self) -> np.ndarray:
        """Each element's set root (pointer jumping over the whole forest, vectorised)."""
        parent = self.parent.copy()
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                return parent
            parent = jumped


def union_equal_keys(uf: UnionFind, members: np.ndarray, keys: np.ndarray) -> None:
    """Union the ``members`` (row indices) that share a key (one pass over sorted keys)."""
    if len(members) < 2:
        return
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    same = sorted_keys[1:] == sorted_keys[:-1]
    uf.union_pairs(members[order[1:][same]], members[order[:-1][same]])


@dataclass(frozen=True)
class Grouping:
    """Per row: its group's representative (row index, -1 for rows not grouped), group size,
    and whether it is the representative."""

    representative: np.ndarray
    size: np.ndarray
    keep: np.ndarray

    @property
    def groups(self) -> int:
        """Groups of two or more."""
        grouped = self.representative >= 0
        reps = np.unique(self.representative[grouped & (self.size > 1)])
        return int(len(reps))

    @property
    def duplicates(self) -> int:
        """Rows that are not their group's representative (what the filter removes)."""
        return int(((self.representative >= 0) & ~self.keep).sum())


def grouping(roots: np.ndarray, rank: np.ndarray, usable: np.ndarray) -> Grouping:
    """Groups from set roots: the representative is the best-ranked member of each set;
    rows not ``usable`` get representative -1, size 0 and keep False."""
    n = len(roots)
    representative = np.full(n, -1, dtype=np.int64)
    size = np.zeros(n, dtype=np.int64)
    keep = np.zeros(n, dtype=bool)
    rows = np.flatnonzero(usable)
    if len(rows):
        sets, inverse, counts = np.unique(roots[rows], return_inverse=True, return_counts=True)
        best = np.full(len(sets), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(best, inverse, rank[rows])
        by_rank = np.empty(n, dtype=np.int64)
        by_rank[rank] = np.arange(n)
        representative[rows] = by_rank[best[inverse]]
        size[rows] = counts[inverse]
        keep[rows] = representative[rows] == rows
    return Grouping(representative, size, keep)
