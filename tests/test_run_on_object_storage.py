"""Runs that live on S3 (`--run s3://bucket/runs/r1`), against a real S3 server (moto's server
mode, credentials enforced): every command works on a local mirror, pulled before and pushed
after; the tables on the store equal a local run of the same pool; a second machine (another
cache) sees what the first wrote; the push order keeps every write atomic for readers; other
folders (hand-off and reinforced shards) and recipes work there too; one writer per output
(lock objects on the store: two machines write two outputs at once, ingest waits for both);
ingest's --storage-options reach a run on a URL; a URL that holds no run, a missing bucket, a
refused key or a store that is down is one line and exit 2."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.io.run_store import RemoteRun, relocate
from tests.generators.synthetic import write_synthetic_pool
from tests.test_object_storage import (  # noqa: F401  (fixtures)
    BUCKET,
    TIMING_COLUMNS,
    _filesystem,
    _members,
    _ok,
    _refused,
    _table,
    _upload,
    s3,
    s3_server,
)


def _download(url: str, into: Path) -> Path:
    """Every object under ``url`` into ``into`` (what a reader with only the store sees)."""
    fs = _filesystem()
    prefix = url[len("s3://"):]
    for name in fs.find(prefix):
        target = into / name[len(prefix) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(name, str(target))
    return into


def _bucket() -> Any:
    fs = _filesystem()
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    return fs


def _machine(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    monkeypatch.setenv("FILTER_POOL_CACHE", str(cache))


def _commands(pool: str, run: str, out: Path) -> list[list[str]]:
    return [["ingest", pool, "--run", run],
            ["score", run, "--model", "fp-tiny-vit", "--random-init", "--workers", "0",
             "--batch-size", "8", "--no-progress"],
            ["select", run, "--out", "top", "--by", "dfn_score", "--fraction", "0.5"],
            ["sweep", run, "--by", "dfn_score", "--fractions", "0.25,0.5", "--name", "s"],
            ["export", run, "--subset", "top", "--out", str(out), "--no-progress"]]


@pytest.mark.usefixtures("s3")
def test_a_run_on_s3_holds_the_tables_of_a_local_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = write_synthetic_pool(tmp_path / "pool", num_shards=3, samples_per_shard=8,
                                image_size=32)
    pool_url = _upload(pool.root, "web/pool")
    local = tmp_path / "local"
    for command in _commands(pool_url, str(local), tmp_path / "local-export"):
        _ok(command)
    run_url = f"s3://{BUCKET}/runs/r1"
    _machine(monkeypatch, tmp_path / "machine-a")
    for command in _commands(pool_url, run_url, tmp_path / "remote-export"):
        shown = _ok(command).stdout
        assert "machine-a" not in shown, shown  # the run is named by its URL, not its mirror
    assert run_url in _ok(_commands(pool_url, run_url, tmp_path)[0]).stdout  # finished: kept

    stored = _download(run_url, tmp_path / "stored")
    assert not list(stored.rglob(".*")), "locks and temporaries stay on the machine"
    assert _table(stored / "pool").equals(_table(local / "pool"))
    ours = _table(stored / "scores" / "dfn", TIMING_COLUMNS)
    theirs = _table(local / "scores" / "dfn", TIMING_COLUMNS)
    assert ours.drop_columns(["dfn_score"]).equals(theirs.drop_columns(["dfn_score"]))
    np.testing.assert_allclose(ours.column("dfn_score").to_numpy(zero_copy_only=False),
                               theirs.column("dfn_score").to_numpy(zero_copy_only=False),
                               rtol=1e-5, atol=1e-6)
    done = sorted(p.name for p in (stored / "scores" / "dfn" / "_done").iterdir())
    assert done == [f"part-{i:05d}.json" for i in range(3)]
    for name in ("uids.npy",):
        assert np.array_equal(np.load(stored / "subsets" / "top" / name),
                              np.load(local / "subsets" / "top" / name))
    assert pq.read_table(stored / "subsets" / "top" / "manifest.parquet").equals(
        pq.read_table(local / "subsets" / "top" / "manifest.parquet"))
    assert (stored / "sweeps" / "s").is_dir()
    assert (tmp_path / "remote-export").is_dir()
    assert sorted(p.name for p in (tmp_path / "remote-export").iterdir()) == \
        sorted(p.name for p in (tmp_path / "local-export").iterdir())

    # another machine (its own cache) reads what the first wrote, and writes what it sees
    _machine(monkeypatch, tmp_path / "machine-b")
    sql = "SELECT status, count(*) AS n FROM dfn GROUP BY status ORDER BY status"
    on_b = json.loads(_ok(["query", run_url, sql, "--format", "json"]).stdout)
    assert on_b == json.loads(_ok(["query", str(local), sql, "--format", "json"]).stdout)
    _ok(["select", run_url, "--out", "top10", "--by", "dfn_score", "--fraction", "0.1"])
    _machine(monkeypatch, tmp_path / "machine-a")
    listed = _ok(["query", run_url, "SELECT count(*) AS n FROM dfn", "--format", "json"])
    assert json.loads(listed.stdout)[0]["n"] == 24
    assert (tmp_path / "machine-a" / "runs").is_dir()
    mirror = RemoteRun.of(run_url).mirror
    assert (mirror / "subsets" / "top10" / "uids.npy").is_file()

    # --overwrite replaces the score table on the store too: nothing of the old one stays
    _ok(["score", run_url, "--model", "fp-tiny-vit", "--random-init", "--workers", "0",
         "--batch-size", "4", "--no-progress", "--overwrite"])
    again = _download(run_url, tmp_path / "stored-again")
    assert sorted(p.name for p in (again / "scores" / "dfn").iterdir()) == \
        sorted(p.name for p in (stored / "scores" / "dfn").iterdir())


@pytest.mark.usefixtures("s3")
def test_push_deletes_stale_records_first_and_writes_records_last(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The object store has no rename: the order of a push is what makes it atomic."""
    _machine(monkeypatch, tmp_path / "cache")
    fs = _bucket()
    store = RemoteRun.of(f"s3://{BUCKET}/runs/order")
    files = {"run.json": "{}", "pool/part-00000.parquet": "p0", "scores/d/_scorer.json": "{}",
             "scores/d/part-00000.parquet": "s0", "scores/d/_done/part-00000.json": "{}"}
    for relative, text in files.items():
        (store.mirror / relative).parent.mkdir(parents=True, exist_ok=True)
        (store.mirror / relative).write_text(text)
    (store.mirror / ".locks").mkdir()
    (store.mirror / ".locks" / "score-d.lock").write_text("")
    calls: list[tuple[str, str]] = []  # (operation, file), in the order the store got them
    step: dict[tuple[str, str], int] = {}  # ... and which batched call carried each
    upload, delete = RemoteRun._upload, RemoteRun._delete

    def recorded(operation: str, real: Any) -> Any:
        def call(self: RemoteRun, relatives: list[str]) -> None:
            batch = len(set(step.values()))
            for relative in relatives:
                step[(operation, relative)] = batch
                calls.append((operation, relative))
            return real(self, relatives)
        return call

    monkeypatch.setattr(RemoteRun, "_upload", recorded("put", upload))
    monkeypatch.setattr(RemoteRun, "_delete", recorded("rm", delete))
    assert store.push() == 5
    assert calls[-1] == ("put", "run.json")
    assert step["put", "scores/d/_done/part-00000.json"] > step[
        "put", "scores/d/part-00000.parquet"] == step["put", "pool/part-00000.parquet"]
    assert step["put", "scores/d/_scorer.json"] > step["put", "scores/d/_done/part-00000.json"]
    assert step["put", "run.json"] > step["put", "scores/d/_scorer.json"]
    calls.clear()
    step.clear()
    assert store.push() == 0 and calls == []  # nothing changed, nothing sent

    (store.mirror / "scores/d/part-00000.parquet").write_text("s0, scored again")
    (store.mirror / "scores/d/_done/part-00000.json").write_text('{"again": 1}')
    (store.mirror / "pool/part-00000.parquet").unlink()
    assert store.push() == 2
    assert calls[0] == ("rm", "scores/d/_done/part-00000.json")  # before its part changes
    assert step["put", "scores/d/part-00000.parquet"] < step["put",
                                                              "scores/d/_done/part-00000.json"]
    assert ("rm", "pool/part-00000.parquet") in calls
    assert sorted(store.listing()) == sorted(set(files) - {"pool/part-00000.parquet"})

    # a writer stopped between a part and its record: readers do not take the part
    fs.pipe_file(f"{BUCKET}/runs/order/scores/d/part-00001.parquet", b"s1, no record yet")
    other = RemoteRun(store.url, {}, tmp_path / "other-machine")
    assert other.pull() == 4
    assert not (other.mirror / "scores/d/part-00001.parquet").exists()
    assert (other.mirror / "scores/d/part-00000.parquet").read_text() == "s0, scored again"

    # a table command pulls no embeddings, and its push deletes none
    (store.mirror / "embeddings/d").mkdir(parents=True)
    (store.mirror / "embeddings/d/part-00000.image.npy").write_bytes(b"e0")
    store.push()
    table_command = RemoteRun(store.url, {}, tmp_path / "third-machine")
    table_command.pull(skip=("embeddings/",))
    assert not (table_command.mirror / "embeddings").exists()
    table_command.push(set(table_command.local_files()))
    assert "embeddings/d/part-00000.image.npy" in table_command.listing()


def test_a_worker_moves_a_task_into_its_own_mirror() -> None:
    from curate.score.task import ShardTask

    task = ShardTask(scorer="d", shard_name="0", tar="s3://b/pool/0.tar",
                     pool_part="/client/runs/x/pool/part-00000.parquet",
                     scores_part="/client/runs/x/scores/d/part-00000.parquet")
    moved = relocate(task, Path("/client/runs/x"), Path("/worker/runs/x"))
    assert moved.pool_part == "/worker/runs/x/pool/part-00000.parquet"
    assert moved.scores_part == "/worker/runs/x/scores/d/part-00000.parquet"
    assert moved.tar == task.tar and moved.embeddings_prefix is None


@pytest.mark.usefixtures("s3")
def test_a_url_without_a_run_or_a_store_that_is_down_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, tmp_path / "cache")
    _bucket()
    _refused(["query", f"s3://{BUCKET}/runs/none", "SELECT 1"], f"s3://{BUCKET}/runs/none",
             "is not a run")
    _refused(["select", "s3://no-such-bucket/runs/r", "--out", "t", "--by", "dfn_score",
              "--fraction", "0.5"], "s3://no-such-bucket/runs/r", "bucket")
    with monkeypatch.context() as wrong:
        wrong.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        _refused(["score", f"s3://{BUCKET}/runs/none", "--model", "fp-tiny-vit",
                  "--random-init"], f"s3://{BUCKET}/runs/none", "access refused")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    line = _refused(["query", f"s3://{BUCKET}/runs/none", "SELECT 1"], "cannot reach")
    assert "s3://" in line
    assert not any((tmp_path / "cache").rglob("run.json"))


@pytest.mark.usefixtures("s3")
def test_ingest_storage_options_reach_a_run_on_a_url_over_a_local_pool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ingest LOCAL --run s3://... --storage-options '{"endpoint_url": ...}'`: the options
    serve the run (the pool is local: run.json keeps none); later commands take them from
    FILTER_POOL_STORAGE_OPTIONS. A local pool and a local run refuse them in one line."""
    pool = write_synthetic_pool(tmp_path / "pool", num_shards=1, samples_per_shard=6,
                                image_size=32, plant_bad=False)
    _machine(monkeypatch, tmp_path / "cache")
    _bucket()
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    options = json.dumps({"endpoint_url": endpoint})
    run_url = f"s3://{BUCKET}/runs/options"
    _ok(["ingest", str(pool.root), "--run", run_url, "--storage-options", options])
    monkeypatch.setenv("FILTER_POOL_STORAGE_OPTIONS", options)
    listed = _ok(["query", run_url, "SELECT count(*) AS n FROM pool", "--format", "json"])
    assert json.loads(listed.stdout)[0]["n"] == 6
    assert "storage_options" not in json.loads(
        (RemoteRun.of(run_url).mirror / "run.json").read_text())["source"]
    _refused(["ingest", str(pool.root), "--run", str(tmp_path / "local"), "--storage-options",
              options], "--storage-options", str(pool.root))
    assert not (tmp_path / "local").exists()


@pytest.mark.usefixtures("s3")
def test_export_and_reinforce_read_and_write_object_storage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path) -> None:
    """The hand-off shards and the reinforced shards may be folders on the store as well:
    the same bytes as the local chain."""
    pool = write_synthetic_pool(tmp_path / "pool", num_shards=2, samples_per_shard=6,
                                image_size=32, plant_bad=False)
    _machine(monkeypatch, tmp_path / "cache")
    _bucket()
    teachers = f"fp-tiny-vit:{tiny_checkpoint}"
    outputs = {}
    for where, base in (("local", str(tmp_path / "local")), ("store", f"s3://{BUCKET}/chain")):
        run, handoff, reinforced = f"{base}/run", f"{base}/handoff", f"{base}/reinforced"
        for command in _commands(str(pool.root), run, Path())[:3]:
            _ok(command)
        _ok(["export", run, "--subset", "top", "--out", handoff, "--shard-size", "4",
             "--no-progress"])
        _ok(["reinforce", handoff, "--out", reinforced, "--teachers", teachers,
             "--augmentations", "2", "--workers", "0", "--no-progress"])
        outputs[where] = (Path(handoff), Path(reinforced)) if where == "local" else (
            _download(handoff, tmp_path / "got" / "handoff"),
            _download(reinforced, tmp_path / "got" / "reinforced"))
    for local, stored in zip(outputs["local"], outputs["store"], strict=True):
        assert sorted(p.name for p in stored.iterdir()) == sorted(p.name for p in local.iterdir())
        for tar in local.glob("*.tar"):
            assert _members(stored / tar.name) == _members(tar), tar.name
    assert json.loads(_ok(["validate-reinforced", str(outputs["store"][1]), "--json"]).stdout)[
        "ok"] is True
    _refused(["reinforce", f"s3://{BUCKET}/chain/none", "--out", str(tmp_path / "x"),
              "--teachers", teachers, "--augmentations", "2"], "holds nothing")


@pytest.mark.usefixtures("s3")
def test_a_recipe_runs_on_a_run_and_a_pool_on_s3(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DataComp's baselines over metadata on the store, into a run on the store: the subsets
    there are those of a local run; the run references the metadata (nothing copied)."""
    from tests.generators.datacomp import write_datacomp_metadata

    folder = tmp_path / "metadata"
    write_datacomp_metadata(folder, num_files=2, rows_per_file=100, embed_dim_b32=8,
                            embed_dim_l14=8)
    pool_url = _upload(folder, "datacomp/recipe")
    _machine(monkeypatch, tmp_path / "cache")
    recipe = str(Path(__file__).resolve().parents[1] / "pipelines" / "datacomp_baselines.toml")
    local = tmp_path / "local"
    run_url = f"s3://{BUCKET}/runs/recipe"
    for pool, run in ((str(folder), str(local)), (pool_url, run_url)):
        _ok(["run", recipe, "--set", f"pool={pool}", "--set", f"out={tmp_path / 'o'}",
             "--run", run, "--no-progress"])
    stored = _download(run_url, tmp_path / "stored")
    assert json.loads((stored / "run.json").read_text())["pool_table"]["layout"] == "reference"
    subsets = sorted(p.name for p in (local / "subsets").iterdir())
    assert subsets and sorted(p.name for p in (stored / "subsets").iterdir()) == subsets
    for name in subsets:
        assert np.array_equal(np.load(stored / "subsets" / name / "uids.npy"),
                              np.load(local / "subsets" / name / "uids.npy")), name
    assert list((stored / "recipes").glob("datacomp_baselines-*.json"))


@pytest.mark.usefixtures("s3")
def test_one_writer_at_a_time_across_machines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer holds RUN/.lock on the store (conditional PUT) while it works: another
    machine's writer is refused in one line naming the holder, a reader is not, a lease that
    ran out is taken over, and no lock is left behind."""
    from curate.io import run_lock

    pool = write_synthetic_pool(tmp_path / "pool", num_shards=1, samples_per_shard=6,
                                image_size=16, plant_bad=False)
    fs = _bucket()
    _machine(monkeypatch, tmp_path / "machine-a")
    run_url = f"s3://{BUCKET}/runs/locked"
    for command in _commands(str(pool.root), run_url, tmp_path / "out")[:3]:
        _ok(command)
    lock = f"{BUCKET}/runs/locked/.lock"
    assert not fs.exists(lock)  # released after each command
    other = {"host": "machine-b", "pid": 4242, "command": "filter-pool score", "since": 0}
    fs.pipe_file(lock, json.dumps(other).encode())
    _machine(monkeypatch, tmp_path / "machine-c")
    _refused(["select", run_url, "--out", "t2", "--by", "dfn_score", "--fraction", "0.5"],
             run_url, "`filter-pool score`", "pid 4242 on machine-b")
    assert json.loads(_ok(["query", run_url, "SELECT count(*) AS n FROM dfn", "--format",
                           "json"]).stdout)[0]["n"] == 6  # readers take no lock
    with monkeypatch.context() as later:
        later.setattr(run_lock, "LEASE_SECONDS", 0.0)  # machine-b stopped renewing it
        _ok(["select", run_url, "--out", "t2", "--by", "dfn_score", "--fraction", "0.5"])
        _ok(["ingest", str(pool.root), "--run", run_url])  # the whole run: taken over
    assert not fs.exists(lock)
    assert "subsets/t2/uids.npy" in RemoteRun.of(run_url).listing()

    # machine-b writes one output: the same output is refused, another is not, and so is
    # ingest, which may replace the whole run
    output_lock = f"{BUCKET}/runs/locked/.locks/score-dfn.lock"
    fs.pipe_file(output_lock, json.dumps(other).encode())
    _refused(["score", run_url, "--model", "fp-tiny-vit", "--random-init", "--workers", "0",
              "--no-progress"], f"scorer 'dfn' of {run_url}", "pid 4242 on machine-b")
    _ok(["select", run_url, "--out", "t3", "--by", "dfn_score", "--fraction", "0.5"])
    _refused(["ingest", str(pool.root), "--run", run_url, "--overwrite"],
             f"score-dfn of {run_url}", "pid 4242 on machine-b")
    fs.invalidate_cache()
    assert fs.find(f"{BUCKET}/runs/locked/.locks") == [output_lock]  # ours all released
    assert {"subsets/t2/uids.npy", "subsets/t3/uids.npy"} <= set(
        RemoteRun.of(run_url).listing())


@pytest.mark.usefixtures("s3")
def test_two_machines_write_two_outputs_of_one_run_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A score runs on machine A (a separate process) while machine B selects from a scorer
    already on the store: each locks only its output, both push, and a third machine sees
    both outputs, the score table equal to one scored alone."""
    import subprocess
    import sys

    pool = write_synthetic_pool(tmp_path / "pool", num_shards=4, samples_per_shard=8,
                                image_size=32, plant_bad=False)
    fs = _bucket()
    run_url = f"s3://{BUCKET}/runs/together"
    _machine(monkeypatch, tmp_path / "machine-b")
    for command in _commands(str(pool.root), run_url, tmp_path / "out")[:2]:
        _ok(command)
    scoring = subprocess.Popen(
        [str(Path(sys.executable).parent / "filter-pool"), "score", run_url, "--model",
         "fp-tiny-vit", "--random-init", "--workers", "0", "--batch-size", "2", "--name",
         "second", "--no-progress"],
        env={**os.environ, "FILTER_POOL_CACHE": str(tmp_path / "machine-a")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        held = f"{BUCKET}/runs/together/.locks/score-second.lock"
        for _ in range(600):  # at most 60 s for the scorer to start and lock its output
            fs.invalidate_cache()
            if fs.exists(held) or scoring.poll() is not None:
                break
            time.sleep(0.1)
        assert fs.exists(held), scoring.communicate()
        _ok(["select", run_url, "--out", "top", "--by", "dfn_score", "--fraction", "0.5"])
        assert scoring.poll() is None, "the score ended before the select: nothing was tested"
    finally:
        out, err = scoring.communicate(timeout=300)
    assert scoring.returncode == 0, err
    _machine(monkeypatch, tmp_path / "machine-c")
    listed = _ok(["query", run_url, "SELECT count(*) AS n FROM second WHERE status = 'ok'",
                  "--format", "json"])
    assert json.loads(listed.stdout)[0]["n"] == 32
    assert "subsets/top/uids.npy" in RemoteRun.of(run_url).listing()
    fs.invalidate_cache()
    assert not fs.exists(f"{BUCKET}/runs/together/.locks")
    assert not fs.exists(f"{BUCKET}/runs/together/.lock")
