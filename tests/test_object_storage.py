"""Pools on S3-compatible object storage, read by a local run: a real S3 server (moto's server
mode, a separate process on 127.0.0.1 that checks credentials) holds the pool; ingest, score,
select and export against it give the tables a local copy of the same pool gives, and bad
input (endpoint down, missing bucket, wrong credentials, empty prefix) is one line, exit 2,
nothing written."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.io.workspace import RunPaths
from curate.tables.views import run_query
from tests.generators.datacomp import write_datacomp_metadata
from tests.generators.synthetic import write_synthetic_pool

runner = CliRunner()
BUCKET = "pools"
TIMING_COLUMNS = {"seconds", "wall_seconds"}
SERVER_START_SECONDS = 30


def _moto_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("moto", "s3fs", "flask"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3 server as its own process, enforcing credentials: the first three requests
    (make a user, allow it everything, give it a key) go unchecked, every later one is signed
    with that key or refused. Yields the endpoint and the key."""
    if not _moto_available():
        if os.environ.get("CI") == "true":
            pytest.fail("moto[server] and s3fs are not installed; `pip install -e .[dev]` "
                        "installs them")
        pytest.skip("moto[server] not installed (pip install -e .[dev])")
    import boto3

    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not start on {endpoint}")
                time.sleep(0.1)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="curator")
        policy = {"Version": "2012-10-17",
                  "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="curator", PolicyName="all",
                            PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="curator")["AccessKey"]
        yield {"endpoint": endpoint, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment a user sets: the key, the endpoint, a region; nothing else of theirs."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "FSSPEC_S3")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["secret"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server["endpoint"])
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254
    return s3_server


def _filesystem() -> Any:
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def _upload(local: Path, prefix: str) -> str:
    """Every file of ``local`` under s3://BUCKET/prefix/; the URL."""
    fs = _filesystem()
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    for path in sorted(local.iterdir()):
        fs.put_file(str(path), f"{BUCKET}/{prefix}/{path.name}")
    return f"s3://{BUCKET}/{prefix}"


def _ok(args: list[str]) -> Any:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


def _refused(args: list[str], *words: str) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (args, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _table(folder: Path, drop: set[str] = frozenset()) -> pa.Table:
    table = pa.concat_tables(pq.read_table(p) for p in sorted(folder.glob("part-*.parquet")))
    return table.drop_columns([c for c in table.column_names if c in drop])


def _members(out: Path) -> list[tuple[str, bytes]]:
    members = []
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as archive:
            members += [(m.name, archive.extractfile(m).read()) for m in archive.getmembers()]
    return members


def _pipeline(pool: str, work: Path, *ingest_options: str) -> Path:
    run, out = work / "run", work / "export"
    _ok(["ingest", pool, "--run", str(run), *ingest_options])
    _ok(["score", str(run), "--model", "fp-tiny-vit", "--random-init", "--workers", "0",
         "--batch-size", "8", "--no-progress"])
    _ok(["select", str(run), "--out", "top", "--by", "dfn_score", "--fraction", "0.5"])
    _ok(["export", str(run), "--subset", "top", "--out", str(out), "--no-progress"])
    return run


def test_pool_on_s3_gives_the_tables_of_its_local_copy(
        s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = write_synthetic_pool(tmp_path / "pool", num_shards=2, samples_per_shard=8,
                                image_size=32)
    url = _upload(pool.root, "web/pool")
    local = _pipeline(str(pool.root), tmp_path / "local")
    # the endpoint from --storage-options (kept in run.json, used by score and export)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    options = json.dumps({"endpoint_url": s3["endpoint"]})
    remote = _pipeline(url + "/", tmp_path / "remote", "--storage-options", options)

    record = RunPaths(remote).read_run()
    assert record["source"] == {"kind": "webdataset", "path": url,
                                "storage_options": {"endpoint_url": s3["endpoint"]}}
    assert [s["tar"] for s in record["shards"]] == [f"{url}/{n}.tar" for n in pool.shards]
    assert all(s["fingerprint"]["tar"]["etag"] for s in record["shards"])
    assert s3["secret"] not in (remote / "run.json").read_text()

    assert _table(remote / "pool").equals(_table(local / "pool"))
    scores_remote = _table(remote / "scores" / "dfn", TIMING_COLUMNS)
    scores_local = _table(local / "scores" / "dfn", TIMING_COLUMNS)
    assert scores_remote.drop_columns(["dfn_score"]).equals(
        scores_local.drop_columns(["dfn_score"]))
    np.testing.assert_allclose(scores_remote.column("dfn_score").to_numpy(zero_copy_only=False),
                               scores_local.column("dfn_score").to_numpy(zero_copy_only=False),
                               rtol=1e-5, atol=1e-6)
    assert set(scores_remote.column("status").to_pylist()) > {"ok"}  # planted bad samples too
    for name in ("uids.npy",):
        assert np.array_equal(np.load(local / "subsets" / "top" / name, allow_pickle=False),
                              np.load(remote / "subsets" / "top" / name, allow_pickle=False))
    exported = _members(tmp_path / "remote" / "export")
    assert exported and exported == _members(tmp_path / "local" / "export")


def _trained_pairs(run: Path, out: Path, *options: str) -> dict[str, Any]:
    _ok(["train-dfn", str(run), "--subset", "top", "--out", str(out), "--model", "fp-tiny-vit",
         "--steps", "1", "--batch-size", "4", "--holdout", "0", "--no-progress", *options])
    data = json.loads((out / "train.json").read_text())["data"]
    return {k: data[k] for k in ("pairs", "skipped")}


def test_dedup_report_and_training_read_a_pool_on_s3_like_its_local_copy(
        s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Image hashes and report thumbnails stream the tars from the store; training, which
    reads image members by offset, reads this machine's copy of each tar (fetched once into
    the pool cache under its ETag): all three give what they give on the local copy."""
    pool = write_synthetic_pool(tmp_path / "pool", num_shards=2, samples_per_shard=8,
                                image_size=32)
    url = _upload(pool.root, "web/pool")
    cache = tmp_path / "cache"
    monkeypatch.setenv("FILTER_POOL_CACHE", str(cache))
    runs = {"local": _pipeline(str(pool.root), tmp_path / "local"),
            "remote": _pipeline(url, tmp_path / "remote")}
    thumbnails, pairs = {}, {}
    for name, run in runs.items():
        _ok(["dedup", str(run), "--level", "exact", "--workers", "0", "--no-progress"])
        report = tmp_path / f"{name}.html"
        _ok(["report", str(run), "--subset", "top", "--out", str(report)])
        thumbnails[name] = report.read_text().count("data:image/jpeg;base64,")
        pairs[name] = _trained_pairs(run, tmp_path / f"{name}-model")
    hashes = [_table(run / "features" / "image_hashes") for run in runs.values()]
    assert hashes[0].equals(hashes[1])
    assert set(hashes[1].column("status").to_pylist()) > {"ok"}  # planted bad samples too
    assert thumbnails["remote"] == thumbnails["local"] > 0
    assert pairs["remote"] == pairs["local"] and pairs["local"]["pairs"] > 0
    copies = sorted(p.name for p in cache.glob("pools/*/*.tar"))
    etags = {s["name"]: s["fingerprint"]["tar"]["etag"]
             for s in RunPaths(runs["remote"]).read_run()["shards"]}
    assert copies == sorted(f"{etags[n]}-{n}.tar" for n in pool.shards), copies


def test_a_model_folder_on_s3_scores_like_its_local_copy(
        s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`score --model s3://.../models/m` (a train-dfn output uploaded to the store) loads this
    machine's copy of the folder and records the URL and ETag, not the copy: another machine
    resumes the same scorer, and a model written again to that URL is another scorer."""
    pool = write_synthetic_pool(tmp_path / "pool", num_shards=2, samples_per_shard=6,
                                image_size=32, plant_bad=False)
    run = _pipeline(str(pool.root), tmp_path)
    model = tmp_path / "model"
    _trained_pairs(run, model)
    url = _upload(model, "models/m")
    monkeypatch.setenv("FILTER_POOL_CACHE", str(tmp_path / "cache-a"))
    score = ["score", str(run), "--batch-size", "8", "--workers", "0", "--no-progress"]
    _ok([*score, "--model", str(model), "--name", "here"])
    _ok([*score, "--model", url, "--name", "there"])
    here, there = _table(run / "scores" / "here"), _table(run / "scores" / "there")
    assert here.column("status").equals(there.column("status"))
    np.testing.assert_allclose(here.column("here_score").to_numpy(zero_copy_only=False),
                               there.column("there_score").to_numpy(zero_copy_only=False),
                               rtol=1e-6, atol=1e-7)
    recorded = json.loads((run / "scores" / "there" / "_scorer.json").read_text())
    assert recorded["model"] == url
    assert recorded["weights"].startswith(f"{url}/open_clip_model.safetensors (ETag ")
    assert list((tmp_path / "cache-a").glob("copies/*/*/open_clip_model.safetensors"))

    monkeypatch.setenv("FILTER_POOL_CACHE", str(tmp_path / "cache-b"))  # another machine
    _ok([*score, "--model", url, "--name", "there"])  # the same scorer: finished, kept
    other = tmp_path / "other-model"
    _trained_pairs(run, other, "--seed", "1")
    _filesystem().put_file(str(other / "open_clip_model.safetensors"),
                           f"{BUCKET}/models/m/open_clip_model.safetensors")
    _refused([*score, "--model", url, "--name", "there"], "--overwrite")
    _refused([*score, "--model", f"s3://{BUCKET}/models/none", "--name", "none"],
             f"s3://{BUCKET}/models/none")
    tuned = tmp_path / "tuned"  # fine-tuning starts from the model on the store as well
    _trained_pairs(run, tuned, "--init", url)
    assert json.loads((tuned / "train.json").read_text())["model"]["init"] == url


def test_export_fetches_each_remote_tar_once_and_names_a_store_that_is_down(
        s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Export reads a tar twice (duplicate keys, then samples): a remote tar is fetched once
    into the staging folder and the copy removed; with the store down every selected sample
    is in missing.parquet as shard_truncated naming the endpoint, and no copy is left."""
    from curate.io import storage

    pool = write_synthetic_pool(tmp_path / "pool", num_shards=2, samples_per_shard=6,
                                image_size=32, plant_bad=False)
    run = _pipeline(_upload(pool.root, "once/pool"), tmp_path)
    opened: list[str] = []  # every remote file opened, whoever opens it
    real_init = storage._RemoteFile.__init__

    def counting_init(self: Any, handle: Any, url: str) -> None:
        opened.append(url)
        real_init(self, handle, url)

    monkeypatch.setattr(storage._RemoteFile, "__init__", counting_init)
    again = tmp_path / "again"
    _ok(["export", str(run), "--subset", "top", "--out", str(again), "--no-progress"])
    tars = [name for name in opened if name.endswith(".tar")]
    assert sorted(tars) == sorted(set(tars)) and len(tars) == 2, opened
    assert _members(again) == _members(tmp_path / "export")
    assert not list(again.rglob(".fetch-*"))

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # store gone
    down = tmp_path / "down"
    result = runner.invoke(app, ["export", str(run), "--subset", "top", "--out", str(down),
                                 "--no-progress"])
    assert result.exit_code == 1, result.output  # samples missing: reported, not a crash
    missing = pq.read_table(down / "missing.parquet").to_pylist()
    selected = len(np.load(run / "subsets" / "top" / "uids.npy", allow_pickle=False))
    assert len(missing) == selected and {m["reason"] for m in missing} == {"shard_truncated"}
    assert all("cannot reach the storage endpoint" in m["detail"] for m in missing), missing[0]
    assert not list(down.rglob(".fetch-*"))


def test_a_remote_tar_changed_since_ingest_is_one_line_and_nothing_is_written(
        s3: dict[str, str], tmp_path: Path) -> None:
    """run.json holds each remote tar's size and ETag from ingest: a tar replaced on the store
    afterwards stops score, export, dedup and training with one line naming it (exit 2),
    before they write."""
    pool = write_synthetic_pool(tmp_path / "pool", num_shards=2, samples_per_shard=6,
                                image_size=32, plant_bad=False)
    url = _upload(pool.root, "moved/pool")
    run = _pipeline(url, tmp_path)
    other = write_synthetic_pool(tmp_path / "other", num_shards=1, samples_per_shard=4,
                                 image_size=32, plant_bad=False, seed=7)
    _filesystem().put_file(str(other.root / "00000.tar"), f"{BUCKET}/moved/pool/00000.tar")
    line = _refused(["score", str(run), "--name", "again", "--model", "fp-tiny-vit",
                     "--random-init", "--workers", "0", "--no-progress"],
                    f"{url}/00000.tar", "changed since ingest")
    assert "ingest the pool again" in line
    assert not (run / "scores" / "again").exists()
    _refused(["export", str(run), "--subset", "top", "--out", str(tmp_path / "out2"),
              "--no-progress"], f"{url}/00000.tar", "changed since ingest")
    assert not (tmp_path / "out2").exists()
    _refused(["dedup", str(run), "--level", "exact", "--workers", "0"],
             f"{url}/00000.tar", "changed since ingest")
    assert not (run / "features").exists()
    _refused(["train-dfn", str(run), "--subset", "top", "--out", str(tmp_path / "model"),
              "--model", "fp-tiny-vit", "--steps", "1", "--batch-size", "4", "--no-progress"],
             f"{url}/00000.tar", "changed since ingest")
    assert not (tmp_path / "model").exists()


def test_datacomp_metadata_on_s3_ingests_like_its_local_copy(s3: dict[str, str],
                                                            tmp_path: Path) -> None:
    folder = tmp_path / "metadata"
    write_datacomp_metadata(folder, num_files=2, rows_per_file=30, embed_dim_b32=16,
                            embed_dim_l14=24)
    url = _upload(folder, "datacomp/medium")
    local, remote = tmp_path / "local", tmp_path / "remote-copy"
    _ok(["ingest", str(folder), "--run", str(local), "--copy-pool"])
    _ok(["ingest", url, "--run", str(remote), "--copy-pool"])
    record = RunPaths(remote).read_run()
    assert record["source"]["kind"] == "datacomp"
    assert record["pool_table"] == {"layout": "copy"}
    assert _table(remote / "pool").equals(_table(local / "pool"))
    referenced = tmp_path / "referenced"  # the default for a local pool: the same tables
    _ok(["ingest", str(folder), "--run", str(referenced)])
    by_reference = tmp_path / "remote"  # ... and for a pool on a URL
    _ok(["ingest", url, "--run", str(by_reference)])
    assert RunPaths(by_reference).read_run()["pool_table"]["layout"] == "reference"
    # select --uids-only on score columns reads no metadata column: nothing is fetched
    from curate.io import pool_cache

    uids_only = ["--by", "clip_l14_score", "--fraction", "0.5", "--uids-only"]
    _ok(["select", str(by_reference), "--out", "lean", *uids_only])
    assert not list(pool_cache.pools_root().rglob("*.parquet"))
    _ok(["select", str(by_reference), "--out", "lean-text", *uids_only, "--where",
         "length(text) > 0"])  # a condition on the captions: the metadata is fetched
    assert len(list(pool_cache.pools_root().rglob("*.parquet"))) == 2
    for query in ("SELECT * FROM samples", "SELECT * FROM clip_l14", "SELECT * FROM pool"):
        assert run_query(referenced, query).equals(run_query(remote, query))
        assert run_query(by_reference, query).equals(run_query(remote, query))
    _ok(["select", str(by_reference), "--out", "top", "--by", "clip_l14_score",
         "--fraction", "0.5"])
    _ok(["select", str(remote), "--out", "top", "--by", "clip_l14_score", "--fraction", "0.5"])
    for name in ("manifest.parquet", "dropped.parquet"):
        assert pq.read_table(by_reference / "subsets" / "top" / name).equals(
            pq.read_table(remote / "subsets" / "top" / name))
    _ok(["select", str(remote), "--out", "lean-text", *uids_only, "--where", "length(text) > 0"])
    for name, same_as in (("lean", "top"), ("lean-text", "lean-text")):
        assert np.array_equal(
            np.load(by_reference / "subsets" / name / "uids.npy", allow_pickle=False),
            np.load(remote / "subsets" / same_as / "uids.npy", allow_pickle=False))
    fs = _filesystem()  # the metadata changes on the store: one line, as for a pool on disk
    first = f"{BUCKET}/datacomp/medium/" + sorted(p.name for p in folder.glob("*.parquet"))[0]
    fs.pipe_file(first, fs.cat_file(first) + b"\0")
    pool_cache._listings.clear()  # the listing is reused for a minute within one process
    _refused(["query", str(by_reference), "SELECT url FROM pool"], "changed since ingest",
             "s3://")
    for scorer in ("clip_b32", "clip_l14"):
        assert _table(remote / "scores" / scorer).equals(_table(local / "scores" / scorer))
        for kind in ("image", "text"):
            for part in ("part-00000", "part-00001"):
                name = f"{part}.{kind}.npy"
                assert np.array_equal(
                    np.load(remote / "embeddings" / scorer / name, allow_pickle=False),
                    np.load(local / "embeddings" / scorer / name, allow_pickle=False))


def test_a_shard_the_worker_cannot_read_gets_statuses(
        s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = write_synthetic_pool(tmp_path / "pool", num_shards=2, samples_per_shard=6,
                                image_size=32, plant_bad=False)
    url = _upload(pool.root, "gone/pool")
    run = tmp_path / "run"
    _ok(["ingest", url, "--run", str(run)])
    _filesystem().rm_file(f"{BUCKET}/gone/pool/00001.tar")  # gone after ingest
    result = runner.invoke(app, ["score", str(run), "--model", "fp-tiny-vit", "--random-init",
                                 "--workers", "0", "--no-progress"])
    assert result.exit_code == 1, result.output  # a failed shard, reported
    assert "00001" in result.output
    scores = _table(run / "scores" / "dfn")
    statuses = scores.column("status").to_pylist()
    assert len(statuses) == len(pool.keys) and None not in statuses
    assert statuses[:6] == ["ok"] * 6
    assert statuses[6:] == ["shard_truncated"] * 6
    assert "does not exist" in scores.column("error")[6].as_py()

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # store gone
    result = runner.invoke(app, ["score", str(run), "--name", "later", "--model", "fp-tiny-vit",
                                 "--random-init", "--workers", "0", "--no-progress"])
    assert result.exit_code == 1, result.output
    scores = _table(run / "scores" / "later")
    assert scores.column("status").to_pylist() == ["shard_truncated"] * len(pool.keys)
    assert all("cannot reach the storage endpoint" in e for e in scores.column("error").to_pylist())


def test_bad_object_storage_input_is_one_line_exit_2_nothing_written(
        s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = write_synthetic_pool(tmp_path / "pool", num_shards=1, samples_per_shard=6,
                                image_size=16, plant_bad=False)
    url = _upload(pool.root, "ok/pool")
    _filesystem().pipe_file(f"{BUCKET}/notes/readme.txt", b"no shards here")
    run = tmp_path / "run"

    def refused(pool_url: str, *words: str, options: list[str] = ()) -> str:
        line = _refused(["ingest", pool_url, "--run", str(run), *options], *words)
        assert not run.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["pool"]
        return line

    refused(f"s3://no-such-bucket-{os.getpid()}/pool", "bucket does not exist")
    refused(f"s3://{BUCKET}/nothing/here", "does not exist", "no object under that prefix")
    refused(f"s3://{BUCKET}/notes", "holds no shards")
    refused(url, "may not hold credentials", "'secret'",
            options=["--storage-options", '{"secret": "x"}'])
    refused(url, "'client_kwargs.aws_secret_access_key'", options=[
        "--storage-options", '{"client_kwargs": {"aws_secret_access_key": "x"}}'])
    refused(url, "not valid JSON", options=["--storage-options", "{endpoint"])
    assert not Path("s3:").exists()

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    refused(url, "access refused", "signature")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY0000000")
    refused(url, "access refused", "Access Key Id")

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3["secret"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")  # nobody there
    started = time.monotonic()
    refused(url, "cannot reach the storage endpoint")
    assert time.monotonic() - started < 15
