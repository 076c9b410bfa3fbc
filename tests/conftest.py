"""Shared fixtures: tiny generated pools, tiny model checkpoints, ingested runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a hub

from curate.ingest.stage import IngestConfig, ingest_pool  # noqa: E402
from curate.models import ModelSpec, load_model  # noqa: E402
from curate.select.subset import SelectConfig, select_subset  # noqa: E402
from tests.generators.shapes import write_shapes_pool  # noqa: E402
from tests.generators.synthetic import SyntheticPool, write_synthetic_pool  # noqa: E402

TINY_ARCH = "fp-tiny-vit"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mirrors of runs and pools on a URL go to a folder of the test, never to ~/.cache."""
    monkeypatch.setenv("FILTER_POOL_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory) -> SyntheticPool:
    """Three shards of real JPEGs with one planted bad sample of each kind."""
    return write_synthetic_pool(
        tmp_path_factory.mktemp("pool"), num_shards=3, samples_per_shard=12, image_size=64
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A locally saved state dict of the packaged tiny config (seeded random weights)."""
    torch.manual_seed(0)
    loaded = load_model(ModelSpec(TINY_ARCH, random_init=True))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(loaded.model.state_dict(), path)
    return path


@pytest.fixture()
def run_dir(tmp_path: Path, pool: SyntheticPool) -> Path:
    """A fresh run with the session pool ingested."""
    run = tmp_path / "run"
    ingest_pool(IngestConfig(pool=pool.root, run=run))
    return run


def _shapes_run(root: Path, num_shards: int, samples_per_shard: int) -> Path:
    """A shapes pool ingested into ``root/run`` with subsets 'all' (downloaded) and 'red'."""
    pool = write_shapes_pool(
        root / "pool", num_shards=num_shards, samples_per_shard=samples_per_shard
    )
    run = root / "run"
    ingest_pool(IngestConfig(pool=pool, run=run))
    select_subset(SelectConfig(run=run, name="all", where="status = 'success'"))
    select_subset(SelectConfig(run=run, name="red", where="text LIKE '%red%'"))
    return run


@pytest.fixture(scope="session")
def make_shapes_run() -> Callable[[Path, int, int], Path]:
    """Builds a shapes run with subsets 'all' and 'red' under a given folder."""
    return _shapes_run
