"""A real Dask cluster: `dask scheduler` and two `dask worker` processes started through their
own command line on 127.0.0.1, `score --scheduler` over it, one worker SIGKILLed mid-run, the
client killed and rerun, a scheduler that is not there, and workers that read the pool, the run,
the checkpoint and a head from a real S3 server (a worker or the client killed there too)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from curate.executor import ExecutorConfig
from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.run_store import run_location
from curate.io.workspace import RunPaths
from curate.models import ModelSpec
from curate.score.stage import ScoreConfig, score_run
from tests.generators.synthetic import write_synthetic_pool
from tests.test_object_storage import _upload, s3, s3_server  # noqa: F401  (fixtures)

DASK = str(Path(sys.executable).parent / "dask")
CLI = str(Path(sys.executable).parent / "filter-pool")
START_SECONDS = 90  # a worker imports torch before it joins: seconds on a busy 2-core machine
SHARDS = 16  # enough that a worker killed after the first shard finishes dies mid-run on a fast CPU


@dataclass
class Cluster:
    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {seconds} s")
        time.sleep(0.05)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@contextmanager
def _started_cluster(folder: Path, **worker_env: str) -> Iterator[Cluster]:
    """A scheduler and two single-threaded workers, each its own process (no nanny: a killed
    worker stays dead) with this process's environment (and ``worker_env``), stopped on
    leaving."""
    from distributed import Client

    scheduler_file = folder / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
           **worker_env}
    scheduler = subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(scheduler_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    workers: list[subprocess.Popen] = []
    try:
        _wait_for(scheduler_file.is_file, START_SECONDS, "the scheduler did not start")
        _wait_for(lambda: "address" in scheduler_file.read_text(), 10, "no scheduler address")
        address = json.loads(scheduler_file.read_text())["address"]
        for n in range(2):
            workers.append(subprocess.Popen(
                [DASK, "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                 "--host", "127.0.0.1", "--name", f"w{n}", "--preload", "curate.score.stage"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=START_SECONDS)
        yield Cluster(address, scheduler, workers)
    finally:
        for process in [*workers, scheduler]:
            _stop(process)


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with _started_cluster(tmp_path) as started:
        yield started


def _config(run: Path, checkpoint: Path, scheduler: str | None, **options: Any
            ) -> ScoreConfig:
    return ScoreConfig(run=run, model=ModelSpec("fp-tiny-vit", pretrained=str(checkpoint)),
                       executor=ExecutorConfig(workers=0 if scheduler is None else None,
                                               scheduler=scheduler),
                       batch_size=8, progress=False, **options)


def _scores(run: Path, name: str = "dfn") -> dict[str, tuple[list, np.ndarray]]:
    out = {}
    for part in sorted(RunPaths(run).scores_dir(name).glob("part-*.parquet")):
        table = pq.read_table(part)
        out[part.name] = (table.column("status").to_pylist(),
                          table.column(f"{name}_score").to_numpy(zero_copy_only=False))
    return out


def _assert_same_tables(run: Path, reference: Path, name: str = "dfn") -> None:
    ours, theirs = _scores(run, name), _scores(reference, name)
    assert ours.keys() == theirs.keys() and ours
    for part, (status, score) in ours.items():
        assert status == theirs[part][0], part
        np.testing.assert_allclose(score, theirs[part][1], atol=1e-5, err_msg=part)


@pytest.fixture()
def runs(tmp_path: Path, make_shapes_run, tiny_checkpoint: Path) -> tuple[Path, Path]:
    """Two runs of one SHARDS-shard pool: one scored in-process (the reference), one fresh."""
    reference = make_shapes_run(tmp_path / "reference", SHARDS, 24)
    score_run(_config(reference, tiny_checkpoint, None))
    fresh = make_shapes_run(tmp_path / "fresh", SHARDS, 24)
    return fresh, reference


def test_score_on_a_cluster_started_from_the_dask_cli(
        cluster: Cluster, runs: tuple[Path, Path], tiny_checkpoint: Path) -> None:
    fresh, reference = runs
    summary = score_run(_config(fresh, tiny_checkpoint, cluster.address))
    assert summary.failed_shards == {} and summary.shards_skipped == 0
    _assert_same_tables(fresh, reference)


def test_a_worker_killed_mid_run_loses_nothing(
        cluster: Cluster, runs: tuple[Path, Path], tiny_checkpoint: Path) -> None:
    """SIGKILL one worker once the first shard is done: the scheduler moves its work to the
    other worker, every shard gets one part and one record, the tables equal the reference."""
    fresh, reference = runs
    done_dir = RunPaths(fresh).scores_dir("dfn") / "_done"
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(
        summary=score_run(_config(fresh, tiny_checkpoint, cluster.address))))
    thread.start()
    _wait_for(lambda: done_dir.is_dir() and any(done_dir.iterdir()), START_SECONDS,
              "no shard finished")
    finished_before_kill = len(list(done_dir.iterdir()))
    os.kill(cluster.workers[1].pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()
    summary = result["summary"]
    assert finished_before_kill < SHARDS, "the run ended before the kill: nothing was tested"
    assert summary.failed_shards == {}
    assert sorted(p.name for p in done_dir.iterdir()) == [f"part-{i:05d}.json"
                                                            for i in range(SHARDS)]
    assert summary.stats.samples == SHARDS * 24
    _assert_same_tables(fresh, reference)


def test_a_killed_client_resumes_on_the_cluster(
        cluster: Cluster, runs: tuple[Path, Path], tiny_checkpoint: Path) -> None:
    fresh, reference = runs
    done_dir = RunPaths(fresh).scores_dir("dfn") / "_done"
    command = [CLI, "score", str(fresh),
               "--model", "fp-tiny-vit", "--pretrained", str(tiny_checkpoint),
               "--batch-size", "8", "--scheduler", cluster.address, "--json"]
    client = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: done_dir.is_dir() and any(done_dir.iterdir()), START_SECONDS,
                  "no shard finished")
    finally:
        client.kill()
        client.wait(timeout=30)
    before = len(list(done_dir.iterdir()))
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["shards_skipped"] >= before >= 1
    _assert_same_tables(fresh, reference)


def test_a_scheduler_that_is_not_there_is_one_line_and_writes_nothing(run_dir: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [CLI, "score", str(run_dir), "--model",
         "fp-tiny-vit", "--random-init", "--scheduler", f"tcp://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"tcp://127.0.0.1:{port}" in lines[0], lines
    assert "cannot reach the Dask scheduler" in lines[0]
    assert not RunPaths(run_dir).scores_dir("dfn").exists()


@pytest.mark.usefixtures("s3")  # the user's environment: key, secret, endpoint
def test_workers_read_a_pool_on_s3_that_no_disk_of_theirs_holds(
        tmp_path: Path, tiny_checkpoint: Path) -> None:
    """The pool lives only on a real S3 server (moto, credentials enforced): the workers, started
    with the user's AWS_* environment, read its tars from the bucket; the tables equal an
    in-process score of a local copy, which is deleted before the cluster scores."""
    local = write_synthetic_pool(tmp_path / "pool", num_shards=4, samples_per_shard=8,
                                 image_size=32).root
    url = _upload(local, "cluster-pool")
    reference = tmp_path / "reference"
    ingest_pool(IngestConfig(pool=local, run=reference))
    score_run(_config(reference, tiny_checkpoint, None))
    remote = tmp_path / "remote"
    ingest_pool(IngestConfig(pool=url, run=remote))
    shutil.rmtree(local)
    with _started_cluster(tmp_path) as started:
        summary = score_run(_config(remote, tiny_checkpoint, started.address))
    assert summary.failed_shards == {} and summary.stats.samples == 4 * 8
    _assert_same_tables(remote, reference)


def _client_env(tmp_path: Path) -> dict[str, str]:
    """The client's environment: the user's, with its own cache (not the workers')."""
    return {**os.environ, "FILTER_POOL_CACHE": str(tmp_path / "client-cache")}


def _run_on_s3(tmp_path: Path, checkpoint: Path, name: str, shards: int,
               samples_per_shard: int, **options: Any) -> tuple[str, Path]:
    """A pool generated here, uploaded, and ingested by the client's CLI into a run that only
    the S3 server holds (the local pool is deleted); the run's URL, and an in-process score of
    the same pool (``options`` of its ScoreConfig) as the reference."""
    local = write_synthetic_pool(tmp_path / "pool", num_shards=shards,
                                 samples_per_shard=samples_per_shard, image_size=32).root
    pool_url = _upload(local, f"cluster-pool-{name}")
    reference = tmp_path / "reference"
    ingest_pool(IngestConfig(pool=local, run=reference))
    score_run(_config(reference, checkpoint, None, **options))
    run_url = pool_url.replace(f"cluster-pool-{name}", f"runs/{name}")
    ingested = subprocess.run([CLI, "ingest", pool_url, "--run", run_url],
                              env=_client_env(tmp_path), capture_output=True, text=True,
                              timeout=300)
    assert ingested.returncode == 0, ingested.stderr
    shutil.rmtree(local)
    return run_url, reference


@pytest.mark.usefixtures("s3")
def test_a_run_on_s3_is_scored_by_workers_that_share_no_disk_with_the_client(
        tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pool, run, checkpoint and head live only on the S3 server; the client (the CLI, its own
    cache) and the workers (another cache) share no folder: each worker copies the checkpoint
    (then the head) into its cache, fetches its shard's pool part (then saved embeddings) into
    its own mirror, and uploads the score part, then the completion record; the client pulls
    them. The tables on the store equal an in-process score of a local copy."""
    run_url, reference = _run_on_s3(tmp_path, tiny_checkpoint, "cluster", shards=4,
                                    samples_per_shard=8, save_embeddings=True)
    dim = np.load(RunPaths(reference).embeddings_dir("dfn") / "part-00000.image.npy").shape[1]
    torch.manual_seed(0)
    head = tmp_path / "head" / "linear.pth"
    head.parent.mkdir()
    torch.save(nn.Linear(dim, 1).state_dict(), head)
    score_run(ScoreConfig(run=reference, kind="head", head=head, embeddings="dfn", name="lin",
                          executor=ExecutorConfig(workers=0), progress=False))
    models = _upload(tiny_checkpoint.parent, "models")
    heads = _upload(head.parent, "heads")
    worker_cache = tmp_path / "worker-cache"
    scores = [["--model", "fp-tiny-vit", "--pretrained", f"{models}/{tiny_checkpoint.name}",
               "--batch-size", "8", "--save-embeddings"],
              ["--kind", "head", "--head", f"{heads}/linear.pth", "--embeddings", "dfn",
               "--name", "lin"]]
    with _started_cluster(tmp_path, FILTER_POOL_CACHE=str(worker_cache)) as started:
        for options in scores:
            scored = subprocess.run(
                [CLI, "score", run_url, *options, "--scheduler", started.address, "--json"],
                env=_client_env(tmp_path), capture_output=True, text=True, timeout=300)
            assert scored.returncode == 0, scored.stderr
            assert json.loads(scored.stdout)["samples_scored"] == 4 * 8
            written = sorted(p.name for p in worker_cache.rglob("scores/*/part-*.parquet"))
            assert written == [f"part-{i:05d}.parquet" for i in range(4)]
            shutil.rmtree(worker_cache / "runs")  # the head stage's workers hold no embeddings
    copies = sorted(p.name for p in worker_cache.glob("copies/*/*/*"))
    assert copies == sorted([tiny_checkpoint.name, "linear.pth"]), copies
    monkeypatch.setenv("FILTER_POOL_CACHE", str(tmp_path / "reader-cache"))
    with run_location(run_url) as mirror:
        _assert_same_tables(mirror, reference)
        _assert_same_tables(mirror, reference, "lin")
        assert sorted(p.name for p in (mirror / "scores" / "dfn" / "_done").iterdir()) == \
            [f"part-{i:05d}.json" for i in range(4)]


@pytest.mark.usefixtures("s3")
def test_a_worker_killed_mid_run_of_a_run_on_s3_loses_nothing(
        tmp_path: Path, tiny_checkpoint: Path) -> None:
    """The same SIGKILL, with pool and run only on the S3 server and workers that share no
    disk with the client: the shard the dead worker held (maybe half uploaded: a part, or a
    record written in the workers' cache but not on the store) is redone by the other, every
    shard has one record on the store, and the tables there equal an in-process score of a
    local copy. (It caught a worker trusting a record in its cache that never reached the
    store, about one run in five.)"""
    from tests.test_object_storage import _filesystem

    run_url, reference = _run_on_s3(tmp_path, tiny_checkpoint, "killed", shards=SHARDS,
                                    samples_per_shard=24)
    store = _filesystem()
    done = run_url[len("s3://"):] + "/scores/dfn/_done"

    def records() -> list[str]:
        store.invalidate_cache()
        return store.find(done) if store.exists(done) else []

    with _started_cluster(tmp_path, FILTER_POOL_CACHE=str(tmp_path / "worker-cache")) as started:
        client = subprocess.Popen(
            [CLI, "score", run_url, "--model", "fp-tiny-vit", "--pretrained",
             str(tiny_checkpoint), "--batch-size", "8", "--scheduler", started.address,
             "--json"], env=_client_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        _wait_for(lambda: bool(records()), START_SECONDS, "no shard finished")
        finished_before_kill = len(records())
        os.kill(started.workers[1].pid, signal.SIGKILL)
        out, err = client.communicate(timeout=300)
    assert client.returncode == 0, err
    assert finished_before_kill < SHARDS, "the run ended before the kill: nothing was tested"
    assert json.loads(out)["samples_scored"] == SHARDS * 24
    assert sorted(Path(r).name for r in records()) == [f"part-{i:05d}.json"
                                                       for i in range(SHARDS)]
    with run_location(run_url) as mirror:
        _assert_same_tables(mirror, reference)


@pytest.mark.usefixtures("s3")
def test_a_killed_client_of_a_run_on_s3_resumes(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """The client of a run that only the S3 server holds is SIGKILLed mid-run (it pushed
    nothing and left its scorer's lock on the store): the rerun takes the lock over (its holder is a
    process of this host that is gone), trusts the shards whose records the workers had
    uploaded, scores the rest, and leaves one record per shard, no lock, and the tables of an
    in-process score of a local copy."""
    from tests.test_object_storage import _filesystem

    run_url, reference = _run_on_s3(tmp_path, tiny_checkpoint, "client", shards=SHARDS,
                                    samples_per_shard=24)
    store = _filesystem()
    folder = run_url[len("s3://"):]

    def records() -> list[str]:
        store.invalidate_cache()
        done = f"{folder}/scores/dfn/_done"
        return store.find(done) if store.exists(done) else []

    with _started_cluster(tmp_path, FILTER_POOL_CACHE=str(tmp_path / "worker-cache")) as started:
        command = [CLI, "score", run_url, "--model", "fp-tiny-vit", "--pretrained",
                   str(tiny_checkpoint), "--batch-size", "8", "--scheduler", started.address,
                   "--json"]
        client = subprocess.Popen(command, env=_client_env(tmp_path),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(lambda: bool(records()), START_SECONDS, "no shard finished")
        finally:
            client.kill()
            client.wait(timeout=30)
        before = len(records())
        assert store.find(f"{folder}/.locks") == [f"{folder}/.locks/score-dfn.lock"], \
            "the killed client's lock of its output stays on the store"
        rerun = subprocess.run(command, env=_client_env(tmp_path), capture_output=True,
                               text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert before < SHARDS, "the run ended before the kill: nothing was tested"
    assert json.loads(rerun.stdout)["shards_skipped"] >= before >= 1
    assert sorted(Path(r).name for r in records()) == [f"part-{i:05d}.json"
                                                       for i in range(SHARDS)]
    store.invalidate_cache()
    assert not store.find(f"{folder}/.locks") and not store.exists(f"{folder}/.lock")
    with run_location(run_url) as mirror:
        _assert_same_tables(mirror, reference)
