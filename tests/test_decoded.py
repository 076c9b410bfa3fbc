"""The in-memory decoded training path: same pairs, exact crops, resumable, bounded."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import curate.train.decoded as decoded
from curate.errors import UserError
from curate.io.shards import add_tar_member
from curate.train import TrainConfig, train_clip
from curate.train.checkpoint import load_checkpoint
from curate.train.data import EpochBatchSampler, index_data
from tests.generators.shapes import write_shapes_pool

TINY = "fp-tiny-cnn"
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def shapes_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_pool(tmp_path_factory.mktemp("shapes"), num_shards=2, samples_per_shard=48)


def _tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")


def test_decoded_squares_are_the_centre_of_the_resized_image(shapes_pool: Path) -> None:
    index = index_data(shapes_pool)
    pairs = decoded.decode_pairs(index, 24, _tokenizer())
    side = 24 + decoded.CROP_MARGIN
    assert pairs.images.shape == (len(index), 3, side, side) and pairs.images.dtype == torch.uint8
    assert bool(pairs.valid.all())
    image = Image.open(io.BytesIO(index.read_image_bytes(5))).convert("RGB")
    expected = image.resize((side, side), Image.Resampling.BICUBIC, reducing_gap=3.0)  # square
    assert np.array_equal(pairs.images[5].permute(1, 2, 0).numpy(), np.asarray(expected))
    assert torch.equal(pairs.tokens[7], _tokenizer()([index.captions[7]])[0])


def test_batches_are_exact_crops_and_repeat_from_any_start(shapes_pool: Path) -> None:
    index = index_data(shapes_pool)
    pairs = decoded.decode_pairs(index, 24, _tokenizer())

    def batches(start: int) -> list:
        sampler = EpochBatchSampler(len(pairs), 16, seed=3, start=start, total=9)
        return list(decoded.DecodedBatches(pairs, 24, MEAN, STD, sampler, seed=3))

    full, tail = batches(0), batches(6)
    assert len(full) == 9 and len(tail) == 3
    for (a, ta, _), (b, tb, _) in zip(full[6:], tail, strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    images, tokens, bad = full[0]
    assert images.shape == (16, 3, 24, 24) and tokens.shape[0] == 16 and bad == 0
    # every image is a 24 px window of its pair's decoded square, normalised
    first = list(EpochBatchSampler(len(pairs), 16, 3, 0, 1))[0]
    pixels = images * torch.tensor(STD).view(1, 3, 1, 1) * 255 + torch.tensor(MEAN).view(
        1, 3, 1, 1
    ) * 255
    for row, (_, position) in enumerate(first):
        square = pairs.images[position].float()
        windows = square.unfold(1, 24, 1).unfold(2, 24, 1)  # 3, dy, dx, 24, 24
        found = (windows - pixels[row].view(3, 1, 1, 24, 24)).abs().amax(dim=(0, 3, 4))
        assert float(found.min()) < 1e-3
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(full[:3], full[3:6], strict=True))


def test_undecodable_pairs_are_dropped_and_counted(tmp_path: Path) -> None:
    pool = write_shapes_pool(tmp_path / "pool", num_shards=1, samples_per_shard=16)
    tar = next(pool.glob("*.tar"))
    with tarfile.open(tar, "a") as handle:
        add_tar_member(handle, "broken.jpg", b"not a jpeg", mtime=0)
        add_tar_member(handle, "broken.txt", b"a broken picture", mtime=0)
    index = index_data(pool)
    pairs = decoded.decode_pairs(index, 24, _tokenizer())
    assert int((~pairs.valid).sum()) == 1
    sampler = EpochBatchSampler(len(pairs), len(pairs), seed=0, start=0, total=1)
    images, tokens, bad = next(iter(decoded.DecodedBatches(pairs, 24, MEAN, STD, sampler, 0)))
    assert bad == 1 and len(images) == len(tokens) == len(pairs) - 1


def test_a_cache_over_the_memory_limit_is_refused(
    shapes_pool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decoded, "MAX_CACHE_BYTES", 1000)
    with pytest.raises(UserError, match=r"96 pairs at 28 px .* train without --decoded-cache"):
        decoded.decode_pairs(index_data(shapes_pool), 24, _tokenizer())


def _config(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(
        data=data, out=out, model=TINY, steps=6, batch_size=16, lr=2e-3, warmup=1, holdout=16,
        workers=0, progress=False, checkpoint_every=2, val_every=1000, decoded_cache=True,
    )  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def test_decoded_training_resumes_exactly_and_is_part_of_the_identity(
    shapes_pool: Path, tmp_path: Path
) -> None:
    reference = train_clip(_config(shapes_pool, tmp_path / "straight"))
    record = json.loads((reference.out / "train.json").read_text())
    assert record["hyperparameters"]["decoded_cache"] is True
    assert record["final_metrics"]["loss_last"] < record["final_metrics"]["loss_first"] + 1

    def interrupt(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train_clip(_config(shapes_pool, out), on_step=interrupt)
    assert load_checkpoint(out)["step"] == 2
    with pytest.raises(UserError, match="another configuration.*decoded_cache"):
        train_clip(_config(shapes_pool, out, decoded_cache=False))
    resumed = train_clip(_config(shapes_pool, out))
    assert resumed.record["run"]["resumed_from_step"] == 2
    a, b = reference.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_decoded_cache_refuses_reinforced_data(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not apply to --reinforced"):
        _config(tmp_path, tmp_path / "out", reinforced=tmp_path)
