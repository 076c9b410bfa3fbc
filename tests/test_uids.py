"""The one uid codec: DataComp's u8,u8 pairs, sorted files, validation on read."""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curate.io.uids import (
    UID_DTYPE,
    array_to_uids,
    pairs_to_uid_strings,
    read_uid_file,
    save_uid_file,
    sort_uid_array,
    uid_from_url_caption,
    uids_to_array,
)


def datacomp_pairs(uids: list[str]) -> np.ndarray:
    """DataComp's own expression (baselines/apply_filter.py)."""
    return np.array([(int(u[:16], 16), int(u[16:32], 16)) for u in uids], np.dtype("u8,u8"))


def test_round_trip_and_datacomp_equality() -> None:
    uids = [secrets.token_hex(16) for _ in range(500)] + ["f" * 32, "0" * 32]
    pairs = uids_to_array(uids)
    assert pairs.dtype == UID_DTYPE
    assert (pairs == datacomp_pairs(uids)).all()
    assert (uids_to_array(pa.array(uids)) == pairs).all()
    assert (uids_to_array(pa.chunked_array([uids[:10], uids[10:]])) == pairs).all()
    assert array_to_uids(pairs) == uids
    strings = pairs_to_uid_strings(pairs)
    assert strings.type == pa.string() and strings.to_pylist() == uids
    assert pairs_to_uid_strings(pairs[:0]).to_pylist() == []


def test_sorting_matches_numpy_structured_sort() -> None:
    uids = [secrets.token_hex(16) for _ in range(300)]
    uids += ["00000000000000aa" + "0" * 15 + "2", "00000000000000aa" + "0" * 15 + "1"]
    assert (sort_uid_array(uids_to_array(uids)) == np.sort(datacomp_pairs(uids))).all()


HIGHS = ["random", "sequential", "equal", "top_bits_only", "max"]


def _pairs_with_highs(highs: str, n: int) -> np.ndarray:
    """``n`` pairs whose high halves are ``highs`` (one of HIGHS), low halves from 4 values."""
    rng = np.random.default_rng(n)
    pairs = np.empty(n, UID_DTYPE)
    pairs["f1"] = rng.integers(0, 4, n, dtype=np.uint64) * np.uint64(2**62)
    pairs["f0"] = {
        "random": rng.integers(0, 2**64, n, dtype=np.uint64),
        "sequential": np.arange(n, dtype=np.uint64)[::-1] // np.uint64(3),
        "equal": np.full(n, 7, dtype=np.uint64),
        "top_bits_only": rng.integers(0, 4, n, dtype=np.uint64) << np.uint64(62),
        "max": np.full(n, 2**64 - 1, dtype=np.uint64),
    }[highs]
    return pairs


@pytest.mark.parametrize("highs", HIGHS)
@pytest.mark.parametrize("n", [0, 1, 2, 3, 1000])
def test_sorting_handles_shared_high_bits(highs: str, n: int) -> None:
    """Rows whose high halves share the top bits the sort keys keep (or all of them) still
    come out ordered by the full pair, duplicates included."""
    pairs = _pairs_with_highs(highs, n)
    assert np.array_equal(sort_uid_array(pairs), np.sort(pairs))


@pytest.mark.parametrize("highs", HIGHS)
@pytest.mark.parametrize("n", [2, 3, 1000, 5000])
@pytest.mark.parametrize("layout", ["sorted runs", "unsorted"])
def test_runs_merged_by_bucket_come_out_sorted(highs: str, n: int, layout: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The bucket merge of sorted runs (used from 1M rows) on small inputs: any high halves,
    runs or not, gives NumPy's order."""
    from curate.io import uids as module

    monkeypatch.setattr(module, "BUCKETED_MIN_ROWS", 0)
    pairs = _pairs_with_highs(highs, n)
    if layout == "sorted runs":
        pairs = np.concatenate([np.sort(chunk) for chunk in np.array_split(pairs, 7)])
    assert np.array_equal(sort_uid_array(pairs, runs=True), np.sort(pairs))


def test_bad_uids_are_named() -> None:
    with pytest.raises(ValueError, match="not a uid"):
        uids_to_array(["xyz" + "0" * 29])
    with pytest.raises(ValueError, match="32 hex"):
        uids_to_array(pa.array(["abc"]))


def test_saved_files_are_sorted_and_validated(tmp_path: Path) -> None:
    uids = [secrets.token_hex(16) for _ in range(100)]
    digest = save_uid_file(tmp_path / "uids.npy", uids_to_array(uids))
    assert len(digest) == 64
    loaded = read_uid_file(tmp_path / "uids.npy")
    assert (loaded == np.sort(datacomp_pairs(uids))).all()
    np.save(tmp_path / "unsorted.npy", datacomp_pairs(uids))
    with pytest.raises(ValueError, match=r"unsorted\.npy: not sorted ascending"):
        read_uid_file(tmp_path / "unsorted.npy")
    np.save(tmp_path / "wrong.npy", np.arange(4, dtype=np.int64))
    with pytest.raises(ValueError, match=r"wrong\.npy: dtype int64"):
        read_uid_file(tmp_path / "wrong.npy")
    with pytest.raises(ValueError, match="no such uid file"):
        read_uid_file(tmp_path / "missing.npy")


def test_derived_uid_is_sha256_of_url_tab_caption() -> None:
    import hashlib

    expected = hashlib.sha256(b"http://x/a.jpg\ta cat").hexdigest()[:32]
    assert uid_from_url_caption("http://x/a.jpg", "a cat") == expected
