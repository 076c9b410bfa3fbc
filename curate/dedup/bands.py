"""Near-duplicate pairs of 64-bit hashes without comparing all pairs.

Pigeonhole: split the 64 bits into ``max_distance + 1`` bands; two hashes within Hamming
distance ``d`` differ in at most ``d`` bands, so they agree exactly on at least one. Hashes
are bucketed by each band's value and compared only within a bucket.
"""

from __future__ import annotations

import numpy as np

from curate.dedup.hashes import HASH_BITS, popcount

PAIR_BLOCK = 2048  # rows of one bucket compared at a time (bounded memory for huge buckets)


def band_layout(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of each of the ``max_distance + 1`` bands covering the 64 bits."""
    count = max_distance + 1
    if not 1 <= count <= HASH_BITS:
        raise ValueError(f"max_distance must be in [0, {HASH_BITS - 1}], got {max_distance}")
    widths = [HASH_BITS // count + (1 if i < HASH_BITS % count else 0) for i in range(count)]
    layout, shift = [], 0
    for width in widths:
        layout.append((shift, width))
        shift += width
    return layout


def _bucket_pairs(hashes: np.ndarray, members: np.ndarray, max_distance: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    lefts, rights = [], []
    for start in range(0, len(members), PAIR_BLOCK):
        block = members[start:start + PAIR_BLOCK]
        later = members[start:]
        xor = np.bitwise_xor(hashes[block][:, None], hashes[later][None, :])
        distance = popcount(xor.ravel()).reshape(xor.shape)
        i, j = np.nonzero(distance <= max_distance)
        upper = j > i  # column j of ``later`` is member start + j; keep pairs a < b once
        lefts.append(block[i[upper]])
        rights.append(later[j[upper]])
    return np.concatenate(lefts), np.concatenate(rights)


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (a, b) of ``hashes`` (distinct uint64 values) within ``max_distance``; a
    pair found in several bands is listed several times (harmless for union-find)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    lefts: list[np.ndarray] = [np.empty(0, np.int64)]
    rights: list[np.ndarray] = [np.empty(0, np.int64)]
    if len(hashes) < 2:
        return lefts[0], rights[0]
    for shift, width in band_layout(max_distance):
        keys = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
            left, right = _bucket_pairs(hashes, order[start:end], max_distance)
            lefts.append(left)
            rights.append(right)
    return np.concatenate(lefts).astype(np.int64), np.concatenate(rights).astype(np.int64)
