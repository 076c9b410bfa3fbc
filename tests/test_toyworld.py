"""The toy web world: determinism, noise proportions, eval set, HQ shards, labels kept apart."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from curate.cli import app
from curate.errors import UserError
from curate.ingest.stage import IngestConfig, ingest_pool
from curate.toyworld.noise import NOISE_KINDS, SAMPLE_KINDS
from curate.toyworld.scene import CLASSES
from curate.toyworld.world import (
    DEFAULT_NOISE,
    ToyWorld,
    ToyWorldConfig,
    kind_counts,
    write_toy_world,
)

TINY_WORLD = dict(hq_size=30, pool_size=300, eval_per_class=2, hq_shard_size=16)


def _digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ToyWorld:
    return write_toy_world(
        tmp_path_factory.mktemp("world") / "w", ToyWorldConfig(**TINY_WORLD), progress=False
    )


def _labels(world: ToyWorld) -> list[dict]:
    return pq.read_table(world.pool_labels).to_pylist()


def test_same_seed_gives_identical_bytes_and_other_seed_differs(
    tmp_path: Path, world: ToyWorld
) -> None:
    again = write_toy_world(tmp_path / "again", ToyWorldConfig(**TINY_WORLD), progress=False)
    assert _digest(again.root) == _digest(world.root)
    other = write_toy_world(
        tmp_path / "other", ToyWorldConfig(seed=1, **TINY_WORLD), progress=False
    )
    theirs, ours = _digest(other.root), _digest(world.root)
    assert theirs.keys() == ours.keys()
    changed = [name for name in ours if theirs[name] != ours[name]]
    assert len(changed) > 0.9 * len(ours)
    assert [r["caption"] for r in _labels(other)] != [r["caption"] for r in _labels(world)]


def test_parallel_generation_is_identical(tmp_path: Path) -> None:
    config = dict(hq_size=5, pool_size=600, eval_per_class=1)
    one = write_toy_world(tmp_path / "one", ToyWorldConfig(**config), progress=False)
    two = write_toy_world(tmp_path / "two", ToyWorldConfig(workers=2, **config), progress=False)
    assert _digest(one.root) == _digest(two.root)


def test_noise_proportions_are_as_configured(world: ToyWorld) -> None:
    counts = Counter(r["label"] for r in _labels(world))
    n = world.config.pool_size
    assert set(counts) == set(SAMPLE_KINDS)
    for kind, fraction in DEFAULT_NOISE.items():
        assert abs(counts[kind] - fraction * n) <= 1, kind
    assert abs(counts["clean"] - (1 - sum(DEFAULT_NOISE.values())) * n) <= 1
    assert sum(counts.values()) == n
    assert dict(counts) == world.pool_kinds
    record = json.loads((world.root / "world.json").read_text())
    assert record["pool_kinds"] == world.pool_kinds
    assert record["counts"] == {"hq": 30, "pool": 300, "eval": 2 * len(CLASSES)}


def test_kind_counts_rounds_to_the_pool_size() -> None:
    for size in (1, 7, 99, 1000, 12_345):
        counts = kind_counts(size, DEFAULT_NOISE)
        assert sum(counts.values()) == size
        for kind, fraction in DEFAULT_NOISE.items():
            assert abs(counts[kind] - fraction * size) < 1
    assert kind_counts(10, {"corrupt": 1.0}) == {"clean": 0, "corrupt": 10}


def test_every_noise_kind_does_what_it_says(world: ToyWorld) -> None:
    rows = _labels(world)
    clean_min = world.config.sizes.clean[0]
    captions_by_path = {r["path"]: r["caption"] for r in rows}
    for row in rows:
        data = (world.pool_files / row["path"]).read_bytes()
        label = row["label"]
        if label == "corrupt":
            with pytest.raises(OSError):
                Image.open(io.BytesIO(data)).load()
            continue
        image = Image.open(io.BytesIO(data))
        assert image.size == (row["width"], row["height"]), row
        short, long = min(image.size), max(image.size)
        if label == "tiny_image":
            assert long < clean_min
        elif label == "extreme_aspect":
            assert long / short > 3.0
        else:
            assert short >= clean_min and long / short < 3.0, row
        if label == "near_duplicate":
            assert captions_by_path[row["source_path"]].lower() == row["caption"].lower()
            source = Image.open(world.pool_files / row["source_path"]).convert("RGB")
            assert source.size == image.size
            diff = np.abs(np.asarray(source, np.int16) - np.asarray(image.convert("RGB"), np.int16))
            assert diff.mean() < 40, row
        if label == "other_language":
            assert row["detail"] in ("de", "fr", "es")
        if label == "partly_wrong":
            assert row["detail"].startswith(("wrong shape", "wrong colour"))
    alt = [r["caption"] for r in rows if r["label"] == "generic_alt"]
    assert all(len(c) < 30 for c in alt)
    assert {r["true_class"] for r in rows} <= set(range(len(CLASSES)))


def test_mismatched_captions_come_from_another_class(world: ToyWorld) -> None:
    from curate.toyworld.noise import PoolContext

    rows = [r for r in _labels(world) if r["label"] == "mismatched"]
    assert rows
    for row in rows:
        source = int(row["source_path"].split(".")[0])
        ctx = PoolContext(seed=0, index=source, sizes=world.config.sizes)
        scene, caption = ctx.base()
        assert caption == row["caption"]
        assert scene.label != row["true_class"]


def test_eval_set_is_in_the_shared_format(world: ToyWorld) -> None:
    spec = json.loads((world.eval / "eval.json").read_text())
    assert spec["classnames"] == list(CLASSES) and len(spec["classnames"]) >= 20
    assert spec["templates"] and all("{}" in t for t in spec["templates"])
    with open(world.eval / "labels.csv", newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["image", "label"]
        rows = list(reader)
    labels = Counter(int(label) for _, label in rows)
    assert labels == {i: 2 for i in range(len(CLASSES))}
    for image, _ in rows:
        with Image.open(world.eval / image) as im:
            assert im.format == "JPEG" and min(im.size) >= world.config.sizes.clean[0]


def test_hq_is_an_ingestible_img2dataset_pool(tmp_path: Path, world: ToyWorld) -> None:
    summary = ingest_pool(IngestConfig(pool=world.hq, run=tmp_path / "run"))
    assert summary.samples == 30 and summary.shards == 2
    assert summary.by_status == {"success": 30}
    assert summary.duplicate_uids == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"noise": {"typo": 0.1}}, "unknown noise kind"),
        ({"noise": {"corrupt": 0.7, "mismatched": 0.5}}, "sum to at most 1"),
        ({"pool_size": 0}, "pool_size must be >= 1"),
    ],
)
def test_bad_config_is_a_user_error(changes: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        ToyWorldConfig(**changes)


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "w"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="exists; use --overwrite"):
        write_toy_world(out, ToyWorldConfig(**TINY_WORLD), progress=False)
    with pytest.raises(UserError, match="not a toy world"):
        write_toy_world(out, ToyWorldConfig(**TINY_WORLD), overwrite=True, progress=False)
    assert (out / "mine.txt").read_text() == "keep me"


def test_cli_toyworld_rejects_unknown_scale(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["toyworld", "--out", str(tmp_path / "w"), "--scale", "xl"])
    assert result.exit_code == 2
    assert "unknown scale 'xl'" in result.output
    assert not (tmp_path / "w").exists()


def test_noise_registry_covers_the_issue() -> None:
    assert set(NOISE_KINDS) == {
        "mismatched", "generic_alt", "partly_wrong", "other_language", "near_duplicate",
        "tiny_image", "extreme_aspect", "corrupt",
    }  # fmt: skip
