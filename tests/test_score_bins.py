"""ScoreBins: order statistics and threshold counts equal a full sort and direct comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from curate.tables.bins import ScoreBins


def _pools() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    spread = rng.normal(0.25, 0.05, 20_000).astype(np.float32)
    tied = rng.integers(0, 30, 5_000).astype(np.float32) / 7  # many rows per value
    one_value = np.full(300, 0.5, dtype=np.float32)
    with_inf = np.concatenate([spread[:1000], np.float32([np.inf, -np.inf, np.inf])])
    integers = rng.integers(-5, 5, 2_000)
    return {"spread": spread, "tied": tied, "one_value": one_value, "with_inf": with_inf,
            "integers": integers, "float64": rng.random(3_000)}


@pytest.mark.parametrize("name", sorted(_pools()))
@pytest.mark.parametrize("size", [1, 7, 64_000])
def test_order_statistics_equal_a_full_sort(name: str, size: int) -> None:
    scores = _pools()[name]
    ranks = [0, 1, len(scores) // 3, len(scores) // 2, len(scores) - 2, len(scores) - 1]
    got = ScoreBins.build(scores, size).order_statistics(ranks)
    assert got.tolist() == np.sort(scores).astype(np.float64)[ranks].tolist()


@pytest.mark.parametrize("name", sorted(_pools()))
@pytest.mark.parametrize("size", [1, 7, 64_000])
def test_reached_counts_and_weights_equal_direct_comparisons(name: str, size: int) -> None:
    scores = _pools()[name]
    weights = np.arange(len(scores)) % 13
    finite = scores[np.isfinite(scores)]
    thresholds = [
        float(np.median(finite)),  # a score of the pool: its ties are kept
        float(finite.min()) - 1.0, float(finite.max()) + 1.0,
        float(np.float32(0.25)) + 1e-12,  # a float64 just above a float32 value
        np.inf, -np.inf, float("nan"),
        *np.quantile(finite, [0.1, 0.5, 0.9]).tolist(),
    ]
    bins = ScoreBins.build(scores, size)
    kept, (weighted,) = bins.reached(thresholds, [weights])
    exact = scores.astype(np.float64)
    for i, t in enumerate(thresholds):
        mask = exact >= t
        assert kept[i] == int(mask.sum()), t
        assert weighted[i] == float(weights[mask].sum()), t


def test_histogram_counts_every_score_in_equal_width_bins() -> None:
    scores = _pools()["spread"]
    edges, counts = ScoreBins.build(scores).histogram(100)
    assert counts.sum() == len(scores) and len(edges) == 101
    assert edges[0] == scores.min() and np.isclose(edges[-1], scores.max())
    direct, _ = np.histogram(scores.astype(np.float64), bins=edges)
    assert np.abs(direct - counts).sum() <= 4  # differ only by rounding at bin edges


def test_empty_scores_and_bad_ranks() -> None:
    bins = ScoreBins.build(np.zeros(0, dtype=np.float32))
    assert bins.order_statistics([]).tolist() == []
    kept, _ = bins.reached([0.0, 1.0])
    assert kept.tolist() == [0, 0]
    with pytest.raises(IndexError):
        ScoreBins.build(np.ones(3)).order_statistics([3])
