"""The sharded-stage runner: skips finished shards, redoes failed ones, adds stats up, names
failures, writes each completion record after the shard's outputs; in-process and on Dask."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from curate.executor import ExecutorConfig
from curate.io.workspace import atomic_path
from curate.runner import Shard, ShardedStage, ShardStats, StageSummary, read_record, run_sharded

IN_PROCESS = ExecutorConfig(workers=0, retries=0)


def write_shard(task: dict, progress) -> ShardStats:
    """A stage's shard function: one output file (atomic), stats; fails when asked to."""
    out = Path(task["out"])
    record = out.parent / "_done" / f"{out.stem}.json"
    if task.get("raise"):
        raise RuntimeError(f"cannot read {task['name']}")
    assert not record.exists()  # the runner writes it only after this function returns
    with atomic_path(out) as tmp:
        tmp.write_text(f"{task['name']} {os.getpid()}\n")
    progress(task["samples"])
    stats = ShardStats(shards=1, samples=task["samples"], by_status=Counter(ok=task["samples"]))
    if task.get("truncated"):
        stats.failed_shards[task["name"]] = "truncated tar"
    return stats


def _stage(out: Path, specs: list[dict]) -> ShardedStage:
    shards = []
    for spec in specs:
        output = str(out / f"{spec['name']}.txt")
        shards.append(Shard(name=spec["name"], part=spec["name"], task={**spec, "out": output},
                            outputs=(output,)))
    return ShardedStage(name="toy", shards=tuple(shards), task_fn=write_shard,
                        stats_type=ShardStats, output_dir=out,
                        progress_total=lambda tasks: sum(t["samples"] for t in tasks))


def _specs(**overrides: dict) -> list[dict]:
    return [{"name": f"s{i}", "samples": i + 1, **overrides.get(f"s{i}", {})} for i in range(4)]


def test_runs_every_shard_then_skips_the_finished(tmp_path: Path) -> None:
    summary = run_sharded(_stage(tmp_path, _specs()), IN_PROCESS, progress=False)
    assert isinstance(summary, StageSummary)
    assert (summary.shards_total, summary.shards_skipped, summary.failed_shards) == (4, 0, {})
    assert summary.stats.samples == summary.now.samples == 1 + 2 + 3 + 4
    for i in range(4):
        record = read_record(tmp_path / "_done" / f"s{i}.json", ShardStats)
        assert record is not None and record.samples == i + 1
        output = tmp_path / f"s{i}.txt"
        assert (tmp_path / "_done" / f"s{i}.json").stat().st_mtime_ns >= output.stat().st_mtime_ns
    again = run_sharded(_stage(tmp_path, _specs()), IN_PROCESS, progress=False)
    assert (again.shards_skipped, again.now.samples, again.stats.samples) == (4, 0, 10)
    payload = again.to_dict()
    assert payload["samples"] == 10 and payload["by_status"] == {"ok": 10}
    assert "10 samples in 4 shards (4 already done)" in again.text()


def test_failed_shards_are_named_and_redone(tmp_path: Path) -> None:
    specs = _specs(s1={"raise": True}, s2={"truncated": True})
    summary = run_sharded(_stage(tmp_path, specs), IN_PROCESS, progress=False)
    assert set(summary.failed_shards) == {"s1", "s2"}
    assert "cannot read s1" in summary.failed_shards["s1"]
    assert summary.failed_shards["s2"] == "truncated tar"
    assert "FAILED shard s1" in summary.text() and "FAILED shard s2" in summary.text()
    assert not (tmp_path / "_done" / "s1.json").exists()  # no record for a shard that raised
    assert (tmp_path / "_done" / "s2.json").is_file()  # a record naming the failure
    fixed = run_sharded(_stage(tmp_path, _specs()), IN_PROCESS, progress=False)
    assert fixed.failed_shards == {}
    assert (fixed.shards_skipped, fixed.now.shards) == (2, 2)  # s1 and s2 redone
    assert fixed.stats.samples == 10 and fixed.stats.shards == 4


def test_a_shard_whose_output_is_gone_is_redone(tmp_path: Path) -> None:
    run_sharded(_stage(tmp_path, _specs()), IN_PROCESS, progress=False)
    (tmp_path / "s3.txt").unlink()
    (tmp_path / ".s0.txt.deadbeef.tmp").write_text("half")  # an interrupted write
    again = run_sharded(_stage(tmp_path, _specs()), IN_PROCESS, progress=False)
    assert again.now.shards == 1 and (tmp_path / "s3.txt").is_file()
    assert not list(tmp_path.glob(".*.tmp"))


def test_stats_add_up_and_round_trip() -> None:
    a = ShardStats(shards=1, samples=3, seconds=1.0, by_status=Counter(ok=2, corrupt_image=1))
    b = ShardStats(shards=1, samples=2, by_status=Counter(ok=2), failed_shards={"x": "cut"})
    total = a + b
    assert (total.shards, total.samples, total.ok, total.failed) == (2, 5, 4, 1)
    assert total.failed_shards == {"x": "cut"}
    assert ShardStats.from_dict(json.loads(json.dumps(total.to_dict()))) == total


def test_on_a_two_worker_local_cluster(tmp_path: Path) -> None:
    specs = _specs(s1={"raise": True})
    config = ExecutorConfig(workers=2, retries=1)
    summary = run_sharded(_stage(tmp_path, specs), config, progress=False)
    assert list(summary.failed_shards) == ["s1"]
    assert summary.stats.samples == 1 + 3 + 4
    pids = {int((tmp_path / f"s{i}.txt").read_text().split()[1]) for i in (0, 2, 3)}
    assert os.getpid() not in pids  # written on the workers
    records = sorted(p.name for p in (tmp_path / "_done").glob("*.json"))
    assert records == ["s0.json", "s2.json", "s3.json"]


def test_a_job_run_twice_in_one_attempt_keeps_its_record(tmp_path: Path) -> None:
    """Dask recomputes a finished task whose result was on a worker that died; that second
    execution must leave the first one's record in place (it once deleted it and was cancelled
    before rewriting it: a shard without a record in a run that reported no failures)."""
    from curate.runner.run import _run_and_record, plan

    stage = _stage(tmp_path, _specs())
    jobs, _ = plan(stage)
    calls: list[str] = []

    def counted(task: dict, progress) -> ShardStats:
        calls.append(task["name"])
        return write_shard(task, progress)

    first = _run_and_record(counted, ShardStats, jobs[0], lambda n: None)
    record = Path(jobs[0].record)
    written = record.read_bytes()
    again = _run_and_record(counted, ShardStats, jobs[0], lambda n: None)
    assert calls == ["s0"] and again == first and record.read_bytes() == written
    assert json.loads(written)["attempt"] == jobs[0].attempt
    # a later run (another attempt) that plans the shard again really reruns it
    (tmp_path / "s0.txt").unlink()
    rerun_jobs, _ = plan(stage)
    assert rerun_jobs[0].attempt != jobs[0].attempt
    _run_and_record(counted, ShardStats, rerun_jobs[0], lambda n: None)
    assert calls == ["s0", "s0"]
    assert json.loads(record.read_text())["attempt"] == rerun_jobs[0].attempt
