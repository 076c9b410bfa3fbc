"""Scoring a run: one row per sample, statuses, exact scores, resume, Dask, bad input."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from curate.errors import UserError
from curate.executor import ExecutorConfig, auto_workers
from curate.executor import base as executor_base
from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.workspace import RunPaths
from curate.models import ModelSpec, load_model, weight_bytes
from curate.score.scorer import Scorer
from curate.score.shard import ShardTask, score_shard
from curate.score.stage import ScoreConfig, ScoreError, _executor_config, score_run
from tests.generators.synthetic import SyntheticPool, truncate_file

TINY = "fp-tiny-vit"
PLANTED_STATUS = {
    "failed_to_download": "not_downloaded",
    "corrupt_image": "corrupt_image",
    "unsupported_format": "unsupported_format",
    "missing_caption": "missing_caption",
    "missing_image": "missing_image",
    "too_large": "too_large",
}


def _config(run: Path, checkpoint: Path, workers: int = 0, **kwargs) -> ScoreConfig:
    return ScoreConfig(
        run=run,
        model=ModelSpec(TINY, pretrained=str(checkpoint)),
        executor=ExecutorConfig(workers=workers),
        progress=False,
        **{"batch_size": 8, **kwargs},
    )


def _table(run: Path, name: str = "dfn") -> pl.DataFrame:
    scores = pl.read_parquet(RunPaths(run).scores_dir(name) / "part-*.parquet")
    pool = pl.read_parquet(RunPaths(run).pool_dir / "part-*.parquet").select("uid", "key")
    return pool.join(scores, on="uid", how="left", maintain_order="left")


def _direct_scores(pool: SyntheticPool, checkpoint: Path, keys: list[str]) -> dict[str, float]:
    """open_clip by hand, no filter-pool code in the loop: decode, eval transform, cosine."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(TINY)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    model.eval()
    tokenizer = open_clip.get_tokenizer(TINY)
    wanted = set(keys)
    out: dict[str, float] = {}
    for shard in pool.shards:
        with tarfile.open(pool.root / f"{shard}.tar") as archive:
            names = archive.getnames()
            for key in sorted({n.split(".")[0] for n in names} & wanted):
                image = Image.open(io.BytesIO(archive.extractfile(f"{key}.jpg").read()))
                caption = archive.extractfile(f"{key}.txt").read().decode()
                with torch.no_grad():
                    img = model.encode_image(preprocess(image)[None])
                    txt = model.encode_text(tokenizer([caption]))
                out[key] = torch.nn.functional.cosine_similarity(img, txt).item()
    return out


def test_every_sample_has_one_row_with_the_right_status(
    run_dir: Path, pool: SyntheticPool, tiny_checkpoint: Path
) -> None:
    summary = score_run(_config(run_dir, tiny_checkpoint))
    table = _table(run_dir)
    assert table["key"].to_list() == pool.keys
    assert table["uid"].n_unique() == len(pool.keys)
    status = dict(zip(table["key"], table["status"], strict=True))
    for key, kind in pool.planted.items():
        assert status[key] == PLANTED_STATUS[kind], key
    good = [k for k in pool.keys if k not in pool.planted]
    assert all(status[k] == "ok" for k in good)
    errors = dict(zip(table["key"], table["error"], strict=True))
    assert all(errors[k] for k in pool.planted)
    assert table.filter(pl.col("status") != "ok")["dfn_score"].is_null().all()
    assert summary.stats.samples == len(pool.keys)
    assert summary.stats.ok == len(good)
    assert summary.stats.by_status["too_large"] == 1
    assert not summary.failed_shards


@pytest.mark.parametrize("batch_size", [3, 8])
def test_scores_equal_a_direct_open_clip_computation(
    run_dir: Path, pool: SyntheticPool, tiny_checkpoint: Path, batch_size: int
) -> None:
    # batch 3: several caption windows per shard, each encoded in length order, then restored
    # on the CPU: the direct computation is Pillow + fp32 there (a GPU scores in fp16 by default)
    score_run(_config(run_dir, tiny_checkpoint, batch_size=batch_size, device="cpu"))
    table = _table(run_dir).filter(pl.col("status") == "ok")
    direct = _direct_scores(pool, tiny_checkpoint, table["key"].to_list())
    ours = dict(zip(table["key"], table["dfn_score"], strict=True))
    assert direct.keys() == ours.keys()
    diff = max(abs(direct[k] - ours[k]) for k in direct)
    assert diff < 1e-4


def test_embeddings_are_float16_and_row_aligned(run_dir: Path, tiny_checkpoint: Path) -> None:
    score_run(_config(run_dir, tiny_checkpoint, save_embeddings=True))
    paths = RunPaths(run_dir)
    scores = pl.read_parquet(paths.scores_dir("dfn") / "part-00001.parquet")
    image = np.load(paths.embeddings_dir("dfn") / "part-00001.image.npy")
    text = np.load(paths.embeddings_dir("dfn") / "part-00001.text.npy")
    assert image.dtype == np.float16 and image.shape == (scores.height, 64)
    ok = (scores["status"] == "ok").to_numpy()
    cosine = (image[ok].astype(np.float32) * text[ok].astype(np.float32)).sum(axis=1)
    np.testing.assert_allclose(cosine, scores["dfn_score"].to_numpy()[ok], atol=5e-3)
    assert np.isnan(image[~ok]).all()


def test_resume_recomputes_only_the_missing_shard(run_dir: Path, tiny_checkpoint: Path) -> None:
    score_run(_config(run_dir, tiny_checkpoint))
    scores_dir = RunPaths(run_dir).scores_dir("dfn")
    before = {p.name: p.stat().st_mtime_ns for p in scores_dir.glob("part-*.parquet")}
    reference = _table(run_dir)
    (scores_dir / "part-00001.parquet").unlink()
    (scores_dir / "_done" / "part-00001.json").unlink()
    summary = score_run(_config(run_dir, tiny_checkpoint))
    after = {p.name: p.stat().st_mtime_ns for p in scores_dir.glob("part-*.parquet")}
    assert summary.shards_skipped == 2
    assert summary.samples_scored == 12
    assert after["part-00000.parquet"] == before["part-00000.parquet"]
    assert after["part-00002.parquet"] == before["part-00002.parquet"]
    assert _table(run_dir).equals(reference)


def test_part_without_completion_record_is_redone(run_dir: Path, tiny_checkpoint: Path) -> None:
    score_run(_config(run_dir, tiny_checkpoint))
    reference = _table(run_dir)
    scores_dir = RunPaths(run_dir).scores_dir("dfn")
    (scores_dir / "_done" / "part-00002.json").unlink()
    (scores_dir / "part-00002.parquet").write_bytes(b"half written")
    (scores_dir / ".part-00000.parquet.deadbeef.tmp").write_bytes(b"left by a kill")
    summary = score_run(_config(run_dir, tiny_checkpoint))
    assert summary.shards_skipped == 2
    assert _table(run_dir).equals(reference)
    assert not list(scores_dir.glob(".*.tmp"))


def test_two_dask_workers_give_the_same_tables(
    run_dir: Path, tmp_path: Path, pool: SyntheticPool, tiny_checkpoint: Path
) -> None:
    score_run(_config(run_dir, tiny_checkpoint, workers=0))
    other = tmp_path / "run-dask"
    ingest_pool(IngestConfig(pool=pool.root, run=other))
    summary = score_run(_config(other, tiny_checkpoint, workers=2))
    assert summary.stats.samples == len(pool.keys)
    in_process, on_dask = _table(run_dir), _table(other)
    assert in_process.select("uid", "status", "error").equals(on_dask.select("uid", "status",
                                                                             "error"))
    np.testing.assert_allclose(in_process["dfn_score"].to_numpy(),
                               on_dask["dfn_score"].to_numpy(), atol=1e-5)


def test_truncated_tar_keeps_what_was_read_and_fails_the_shard(
    tmp_path: Path, pool: SyntheticPool, tiny_checkpoint: Path
) -> None:
    copy = tmp_path / "pool"
    shutil.copytree(pool.root, copy)
    truncate_file(copy / "00001.tar", 0.5)
    run = tmp_path / "run"
    ingest_pool(IngestConfig(pool=copy, run=run))
    summary = score_run(_config(run, tiny_checkpoint))
    assert list(summary.failed_shards) == ["00001"]
    assert "00001.tar" in summary.failed_shards["00001"]
    table = _table(run)
    assert table.height == len(pool.keys)
    shard1 = table.filter(pl.col("key").str.starts_with("00001"))
    statuses = shard1["status"].to_list()
    assert "ok" in statuses and "shard_truncated" in statuses
    first_cut = statuses.index("shard_truncated")
    assert all(s == "shard_truncated" for s in statuses[first_cut:] if s != "not_downloaded")
    others = table.filter(~pl.col("key").str.starts_with("00001"))
    assert "shard_truncated" not in others["status"].to_list()
    again = score_run(_config(run, tiny_checkpoint))  # a failed shard is retried, not skipped
    assert again.shards_skipped == 2 and list(again.failed_shards) == ["00001"]


def test_same_name_with_another_model_is_refused(run_dir: Path, tiny_checkpoint: Path) -> None:
    score_run(_config(run_dir, tiny_checkpoint))
    other = ScoreConfig(run=run_dir, model=ModelSpec(TINY, random_init=True), progress=False,
                        executor=ExecutorConfig(workers=0))
    with pytest.raises(ScoreError, match="made with fp-tiny-vit:.*pass --overwrite"):
        score_run(other)
    replaced = ScoreConfig(run=run_dir, model=ModelSpec(TINY, random_init=True), progress=False,
                           executor=ExecutorConfig(workers=0), overwrite=True)
    assert score_run(replaced).samples_scored == 36


def test_bf16_is_opt_in_close_to_fp32_and_kept_apart(run_dir: Path, tiny_checkpoint: Path) -> None:
    score_run(_config(run_dir, tiny_checkpoint))
    fp32 = _table(run_dir).filter(pl.col("status") == "ok")["dfn_score"].to_numpy()
    with pytest.raises(ScoreError, match="at precision auto, not .* at bf16"):
        score_run(_config(run_dir, tiny_checkpoint, precision="bf16"))
    score_run(_config(run_dir, tiny_checkpoint, precision="bf16", name="dfn_bf16"))
    bf16 = _table(run_dir, "dfn_bf16").filter(pl.col("status") == "ok")["dfn_bf16_score"]
    difference = abs(bf16.to_numpy() - fp32)
    assert 0 < difference.max() < 0.05  # lossy, but close
    with pytest.raises(ScoreError, match="fp16 needs CUDA"):
        _config(run_dir, tiny_checkpoint, precision="fp16", device="cpu")
    with pytest.raises(ScoreError, match="--precision must be one of"):
        _config(run_dir, tiny_checkpoint, precision="int3")


def test_bad_requests_write_nothing(tmp_path: Path, run_dir: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(UserError, match="is not a run"):
        score_run(_config(tmp_path / "nowhere", tiny_checkpoint))
    with pytest.raises(ScoreError, match="unknown model"):
        score_run(ScoreConfig(run=run_dir, model=ModelSpec("ViT-Q-99", pretrained="x")))
    with pytest.raises(ScoreError, match="does not match"):
        score_run(ScoreConfig(run=run_dir, model=ModelSpec("fp-tiny-rn",
                                                          pretrained=str(tiny_checkpoint))))
    assert not (run_dir / "scores").exists()


def test_score_shard_is_a_plain_function(run_dir: Path, tiny_checkpoint: Path) -> None:
    scorer = Scorer(load_model(ModelSpec(TINY, pretrained=str(tiny_checkpoint))))
    record = RunPaths(run_dir).pool_parts()[0]
    out = run_dir.parent / "direct"
    seen: list[int] = []
    stats = score_shard(
        ShardTask(scorer="x", shard_name="00000", tar=str(_tar_of(run_dir, 0)),
                  pool_part=str(record), scores_part=str(out / "p.parquet"), batch_size=5),
        scorer,
        seen.append,
    )
    assert sum(seen) == stats.samples == 12
    assert pq.read_table(out / "p.parquet").num_rows == 12
    assert not (out / "_done").exists()  # the record is the runner's, not the shard's


def test_threaded_decoding_gives_the_serial_table(run_dir: Path, tiny_checkpoint: Path) -> None:
    """Decode threads (what a CUDA worker uses) keep tar order, statuses and scores."""
    scorer = Scorer(load_model(ModelSpec(TINY, pretrained=str(tiny_checkpoint))))
    out = run_dir.parent / "decode-threads"
    tables = []
    for shard in range(3):  # every shard: the planted failures are spread over them
        for threads in (1, 3):
            part = out / f"{shard}-{threads}.parquet"
            score_shard(
                ShardTask(scorer="x", shard_name=f"{shard:05d}", tar=str(_tar_of(run_dir, shard)),
                          pool_part=str(RunPaths(run_dir).pool_parts()[shard]),
                          scores_part=str(part), batch_size=4, decode_threads=threads),
                scorer,
            )
            tables.append(pq.read_table(part))
    for serial, threaded in zip(tables[::2], tables[1::2], strict=True):
        assert serial.equals(threaded)
    statuses = {s for table in tables for s in table.column("status").to_pylist()}
    assert {"ok", "corrupt_image", "missing_image", "missing_caption"} <= statuses


def test_batched_tensor_decoding_gives_the_image_by_image_table(
    run_dir: Path, tiny_checkpoint: Path, monkeypatch
) -> None:
    """The GPU's path (JPEGs decoded a batch at a time, here on the CPU) keeps tar order,
    statuses and scores of decoding each image alone with the same decoder."""
    from curate.score.image_loader import EvalTransform, PilImageLoader, TensorJpegLoader

    scorer = Scorer(load_model(ModelSpec(TINY, pretrained=str(tiny_checkpoint))))
    preprocess = scorer.loaded.preprocess
    transform = EvalTransform.from_compose(preprocess)
    assert transform is not None

    def tensor_loader(max_pixels: int) -> TensorJpegLoader:
        pil = PilImageLoader(preprocess, max_pixels)
        return TensorJpegLoader(transform, torch.device("cpu"), pil, max_pixels)

    def one_at_a_time(max_pixels: int):
        return tensor_loader(max_pixels).__call__  # no decode_batch: one image per call

    out = run_dir.parent / "batched-decode"
    tables = {}
    for name, loader in (("batched", tensor_loader), ("single", one_at_a_time)):
        monkeypatch.setattr(scorer, "image_loader", loader)
        for shard in range(3):  # every shard: the planted failures are spread over them
            part = out / f"{name}-{shard}.parquet"
            score_shard(
                ShardTask(scorer="x", shard_name=f"{shard:05d}", tar=str(_tar_of(run_dir, shard)),
                          pool_part=str(RunPaths(run_dir).pool_parts()[shard]),
                          scores_part=str(part), batch_size=5),
                scorer,
            )
            tables[name, shard] = pq.read_table(part)
    for shard in range(3):
        assert tables["batched", shard].equals(tables["single", shard])
    statuses = {s for table in tables.values() for s in table.column("status").to_pylist()}
    assert {"ok", "corrupt_image", "missing_image", "too_large"} <= statuses


def _tar_of(run: Path, index: int) -> Path:
    import json

    return Path(json.loads((run / "run.json").read_text())["shards"][index]["tar"])


@pytest.mark.parametrize("keep", [0.02, 0.1, 0.3, 0.6, 0.95])
def test_jpeg_cut_anywhere_is_a_corrupt_image_row(keep: float) -> None:
    from curate.io.image import decode_image
    from curate.io.statuses import CORRUPT_IMAGE, SampleError

    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), (200, 30, 30)).save(buffer, "JPEG")
    data = buffer.getvalue()
    with pytest.raises(SampleError) as failure:
        decode_image(data[: int(len(data) * keep)])
    assert failure.value.status == CORRUPT_IMAGE


def test_existing_cluster_by_scheduler_address(
    run_dir: Path, tmp_path: Path, pool: SyntheticPool, tiny_checkpoint: Path
) -> None:
    """--scheduler joins a cluster someone else started (here: a LocalCluster on loopback)."""
    from distributed import LocalCluster

    score_run(_config(run_dir, tiny_checkpoint, workers=0))
    other = tmp_path / "run-remote"
    ingest_pool(IngestConfig(pool=pool.root, run=other))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None, host="127.0.0.1") as cluster:
        config = ScoreConfig(run=other, model=ModelSpec(TINY, pretrained=str(tiny_checkpoint)),
                             executor=ExecutorConfig(scheduler=cluster.scheduler_address),
                             batch_size=8, progress=False)
        summary = score_run(config)
    assert summary.stats.samples == len(pool.keys)
    np.testing.assert_allclose(_table(other)["dfn_score"].to_numpy(),
                               _table(run_dir)["dfn_score"].to_numpy(), atol=1e-5)


@pytest.mark.parametrize(
    ("cores", "expected"), [(1, 1), (2, 2), (3, 2), (4, 2), (8, 2), (16, 4), (64, 16)]
)
def test_default_workers_follow_the_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int, expected: int
) -> None:
    monkeypatch.setattr(executor_base, "available_cores", lambda: cores)
    assert auto_workers() == expected


@pytest.mark.parametrize(
    ("cores", "gpus", "memory_gib", "weights_gib", "expected"),
    [(16, 1, 141, 0.6, 8), (2, 1, 80, 0.6, 1), (16, 1, 24, 0.6, 3), (64, 8, 80, 1.7, 32),
     (256, 8, 80, 0.6, 64), (256, 8, 80, 10, 40), (16, 2, None, 0, 8)],
)
def test_several_workers_feed_each_gpu(
    monkeypatch: pytest.MonkeyPatch, cores: int, gpus: int, memory_gib: int | None,
    weights_gib: float, expected: int,
) -> None:
    """Up to 8 per GPU, each with two cores and room for the weights and 6 GiB more."""
    monkeypatch.setattr(executor_base, "available_cores", lambda: cores)
    memory = None if memory_gib is None else memory_gib * 2**30
    assert auto_workers(gpus, memory, int(weights_gib * 2**30)) == expected


def test_weight_bytes_come_from_the_architecture() -> None:
    loaded = load_model(ModelSpec(TINY, random_init=True))
    expected = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    assert weight_bytes(ModelSpec(TINY, random_init=True)) == expected
    assert weight_bytes(ModelSpec("ViT-Q-99", random_init=True)) is None


def test_score_without_workers_uses_the_default(tmp_path: Path) -> None:
    spec = ModelSpec("fp-tiny-vit", random_init=True)
    chosen = ScoreConfig(run=tmp_path, model=spec, executor=ExecutorConfig(workers=None))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        memory = min(torch.cuda.get_device_properties(i).total_memory for i in range(gpus))
        expected = auto_workers(gpus, memory, weight_bytes(spec) or 0)
    else:
        expected = auto_workers()
    assert _executor_config(chosen).workers == expected
    on_cpu = ScoreConfig(
        run=tmp_path, model=spec, executor=ExecutorConfig(workers=None), device="cpu"
    )
    assert _executor_config(on_cpu).workers == auto_workers(0)
    explicit = ScoreConfig(run=tmp_path, model=spec, executor=ExecutorConfig(workers=0))
    assert _executor_config(explicit).workers == 0
