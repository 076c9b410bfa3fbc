"""Tests for tests.generators.synthetic: img2dataset layout, planted samples, determinism."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.generators.synthetic import (
    PLANTED_KINDS,
    TOO_LARGE_SIDE,
    SyntheticPool,
    truncate_file,
    write_synthetic_pool,
)

EXPECTED_TYPES = {
    "url": pa.string(),
    "caption": pa.string(),
    "key": pa.string(),
    "status": pa.string(),
    "error_message": pa.string(),
    "width": pa.int64(),
    "height": pa.int64(),
    "original_width": pa.int64(),
    "original_height": pa.int64(),
    "exif": pa.string(),
    "sha256": pa.string(),
}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> SyntheticPool:
    return write_synthetic_pool(tmp_path_factory.mktemp("pool"), seed=7)


def _members(tar_path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes}, checking that each sample's members are adjacent."""
    out: dict[str, dict[str, bytes]] = defaultdict(dict)
    order: list[str] = []
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            if not order or order[-1] != key:
                assert key not in order, f"members of {key} are not adjacent"
                order.append(key)
            data = tar.extractfile(member)
            assert data is not None
            out[key][ext] = data.read()
    assert order == sorted(order)
    return dict(out)


def _rows(pool: SyntheticPool) -> dict[str, dict]:
    rows = {}
    for shard in pool.shards:
        for row in pq.read_table(pool.root / f"{shard}.parquet").to_pylist():
            rows[row["key"]] = row
    return rows


def test_layout_files_exist(pool: SyntheticPool) -> None:
    assert pool.shards == ["00000", "00001", "00002"]
    names = sorted(p.name for p in pool.root.iterdir())
    expected = sorted(
        f"{s}{suffix}" for s in pool.shards for suffix in (".tar", ".parquet", "_stats.json")
    )
    assert names == expected
    assert len(pool.keys) == 3 * 12
    assert all(re.fullmatch(r"\d{9}", k) for k in pool.keys)
    assert pool.keys[:2] == ["000000000", "000000001"]
    assert pool.keys[12] == "000010000"


def test_parquet_columns_and_dtypes(pool: SyntheticPool) -> None:
    keys = []
    for shard in pool.shards:
        table = pq.read_table(pool.root / f"{shard}.parquet")
        assert {f.name: f.type for f in table.schema} == EXPECTED_TYPES
        assert table.num_rows >= 6
        keys += table.column("key").to_pylist()
        statuses = set(table.column("status").to_pylist())
        assert statuses <= {"success", "failed_to_download", "failed_to_resize"}
    assert keys == pool.keys


def test_stats_json(pool: SyntheticPool) -> None:
    rows = _rows(pool)
    for shard in pool.shards:
        stats = json.loads((pool.root / f"{shard}_stats.json").read_text())
        shard_rows = [r for k, r in rows.items() if k.startswith(shard)]
        assert stats["count"] == len(shard_rows)
        assert stats["successes"] == sum(r["status"] == "success" for r in shard_rows)
        assert (
            stats["successes"] + stats["failed_to_download"] + stats["failed_to_resize"]
            == (stats["count"])
        )
        assert sum(stats["status_dict"].values()) == stats["count"]
        assert stats["end_time"] >= stats["start_time"]
        assert isinstance(stats["duration"], float)


def test_tar_members_match_parquet(pool: SyntheticPool) -> None:
    rows = _rows(pool)
    failed = {k for k, kind in pool.planted.items() if kind == "failed_to_download"}
    tar_keys: set[str] = set()
    for shard in pool.shards:
        members = _members(pool.root / f"{shard}.tar")
        tar_keys |= set(members)
        for key, files in members.items():
            assert key.startswith(shard)
            row = rows[key]
            assert row["status"] == "success"
            meta = json.loads(files["json"])
            assert meta == row
            if "jpg" in files:
                assert hashlib.sha256(files["jpg"]).hexdigest() == row["sha256"]
            if "txt" in files:
                assert files["txt"].decode("utf-8") == row["caption"]
    assert tar_keys == set(rows) - failed


def test_planted_kinds_once_each(pool: SyntheticPool) -> None:
    assert sorted(pool.planted.values()) == sorted(PLANTED_KINDS)
    shards_used = {key[:5] for key in pool.planted}
    assert shards_used == set(pool.shards)  # spread over all three shards

    rows = _rows(pool)
    members: dict[str, dict[str, bytes]] = {}
    for shard in pool.shards:
        members.update(_members(pool.root / f"{shard}.tar"))
    by_kind = {kind: key for key, kind in pool.planted.items()}

    key = by_kind["failed_to_download"]
    assert key not in members
    row = rows[key]
    assert row["status"] == "failed_to_download" and row["error_message"]
    assert row["sha256"] is None and row["width"] is None and row["original_height"] is None

    key = by_kind["corrupt_image"]
    with pytest.raises(OSError):
        Image.open(io.BytesIO(members[key]["jpg"])).load()
    assert members[key]["jpg"][:2] == b"\xff\xd8"

    key = by_kind["unsupported_format"]
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(io.BytesIO(members[key]["jpg"]))

    key = by_kind["missing_caption"]
    assert set(members[key]) == {"jpg", "json"}
    assert rows[key]["caption"] is None and json.loads(members[key]["json"])["caption"] is None

    key = by_kind["missing_image"]
    assert set(members[key]) == {"json", "txt"}
    assert rows[key]["status"] == "success"

    key = by_kind["too_large"]
    assert len(members[key]["jpg"]) < 200
    assert rows[key]["sha256"] == hashlib.sha256(members[key]["jpg"]).hexdigest()


def test_good_samples(pool: SyntheticPool) -> None:
    rows = _rows(pool)
    good = [k for k in pool.keys if k not in pool.planted]
    assert len(good) == len(pool.keys) - len(PLANTED_KINDS)
    members: dict[str, dict[str, bytes]] = {}
    for shard in pool.shards:
        members.update(_members(pool.root / f"{shard}.tar"))
    for key in good:
        files = members[key]
        assert set(files) == {"jpg", "json", "txt"}
        with Image.open(io.BytesIO(files["jpg"])) as image:
            assert image.format == "JPEG"
            image.load()
            assert image.size == (64, 64) and image.mode == "RGB"
        caption = files["txt"].decode("utf-8")
        assert 5 <= len(caption.split()) <= 30
        row = rows[key]
        assert row["url"] == f"http://127.0.0.1:8000/{key}.jpg"
        assert row["original_width"] >= row["width"] == 64
    assert len({rows[k]["caption"] for k in good}) > len(good) // 2  # captions vary


def test_too_large_header_reads_without_decoding(
    pool: SyntheticPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    (key,) = [k for k, kind in pool.planted.items() if kind == "too_large"]
    data = _members(pool.root / f"{key[:5]}.tar")[key]["jpg"]
    # With PIL's default limit, opening alone already flags it as a decompression bomb.
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        assert image.size == (TOO_LARGE_SIDE, TOO_LARGE_SIDE)


def test_deterministic(tmp_path: Path) -> None:
    a = write_synthetic_pool(tmp_path / "a", num_shards=2, seed=3)
    b = write_synthetic_pool(tmp_path / "b", num_shards=2, seed=3)
    c = write_synthetic_pool(tmp_path / "c", num_shards=2, seed=4)
    assert a.keys == b.keys and a.planted == b.planted
    for shard in a.shards:
        for suffix in (".tar", ".parquet", "_stats.json"):
            name = f"{shard}{suffix}"
            assert (a.root / name).read_bytes() == (b.root / name).read_bytes(), name
    assert (a.root / "00000.tar").read_bytes() != (c.root / "00000.tar").read_bytes()


def test_uid_column(tmp_path: Path) -> None:
    pool = write_synthetic_pool(tmp_path, num_shards=1, samples_per_shard=8, with_uid_column=True)
    table = pq.read_table(tmp_path / "00000.parquet")
    assert table.schema.field("uid").type == pa.string()
    uids = table.column("uid").to_pylist()
    assert len(set(uids)) == len(uids) == 8
    assert all(re.fullmatch(r"[0-9a-f]{32}", u) for u in uids)
    members = _members(tmp_path / "00000.tar")
    for key, files in members.items():
        assert json.loads(files["json"])["uid"] == uids[pool.keys.index(key)]


def test_clean_pool_and_plant_independence(tmp_path: Path) -> None:
    clean = write_synthetic_pool(tmp_path / "clean", plant_bad=False, seed=1)
    dirty = write_synthetic_pool(tmp_path / "dirty", plant_bad=True, seed=1)
    assert clean.planted == {}
    clean_rows, dirty_rows = _rows(clean), _rows(dirty)
    assert all(r["status"] == "success" for r in clean_rows.values())
    for key in dirty.keys:
        if key not in dirty.planted:
            assert clean_rows[key] == dirty_rows[key]


def test_larger_images_and_bad_arguments(tmp_path: Path) -> None:
    pool = write_synthetic_pool(
        tmp_path / "big", num_shards=1, samples_per_shard=8, image_size=256, plant_bad=False
    )
    data = _members(tmp_path / "big" / "00000.tar")[pool.keys[0]]["jpg"]
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (256, 256)
    with pytest.raises(ValueError):
        write_synthetic_pool(tmp_path / "x", num_shards=1, samples_per_shard=6)
    with pytest.raises(ValueError):
        write_synthetic_pool(tmp_path / "y", samples_per_shard=5)


def test_truncate_file(tmp_path: Path) -> None:
    write_synthetic_pool(tmp_path, num_shards=1, samples_per_shard=8, plant_bad=False)
    tar_path = tmp_path / "00000.tar"
    size = tar_path.stat().st_size
    truncate_file(tar_path, 0.5)
    assert tar_path.stat().st_size == int(size * 0.5)
    with pytest.raises(tarfile.TarError), tarfile.open(tar_path) as tar:
        tar.getmembers()
    with pytest.raises(ValueError):
        truncate_file(tar_path, 1.5)
