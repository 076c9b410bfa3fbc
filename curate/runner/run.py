"""``run_sharded``: plan a stage's shards, skip the finished ones, run the rest on an executor,
write each shard's completion record last, add up the stats."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.executor import ExecutorConfig, TaskFailure, make_executor
from curate.executor.base import Executor, ProgressFn
from curate.io.run_store import RemoteRun, relocate
from curate.io.run_store import active as remote_folders
from curate.io.run_store import holding as remote_folder_holding
from curate.io.workspace import remove_stale_temporaries
from curate.runner.progress import Progress
from curate.runner.records import read_record, record_path, write_record
from curate.runner.stats import Stats
from curate.runner.summary import StageSummary

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """One shard of a stage: its name, its record's name, the task its function gets, the
    outputs that must exist (besides the record) for it to count as finished, and the files of
    the run it reads (a worker of a run on a URL fetches them into its own mirror)."""

    name: str
    part: str
    task: Any
    outputs: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShardedStage:
    """A stage that works shard by shard. ``task_fn(task, progress)`` writes one shard's
    outputs atomically and returns its stats (a ``stats_type``); records go to ``output_dir``'s
    ``_done/``. ``progress_total`` gives the bar's total from the tasks left to run."""

    name: str
    shards: tuple[Shard, ...]
    task_fn: Callable[[Any, ProgressFn], Stats]
    stats_type: type
    output_dir: Path
    progress_total: Callable[[list[Any]], int | None] = field(default=lambda tasks: None)
    unit: str = "sample"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shards", tuple(self.shards))
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        parts = [s.part for s in self.shards]
        if len(set(parts)) != len(parts):
            raise ValueError(f"stage {self.name}: two shards share a completion record")


@dataclass(frozen=True)
class _Job:
    shard: Shard
    record: str
    attempt: str  # one token per run_sharded call, written into the records it makes
    store: RemoteRun | None = None  # the output folder lies on a URL: upload the outputs
    sources: tuple[RemoteRun, ...] = ()  # folders on a URL its inputs may come from


def _on_this_machine(job: _Job) -> tuple[_Job, RemoteRun | None]:
    """A job whose folders lie on URLs, with its paths moved into this machine's mirrors and
    its inputs fetched there; the job unchanged (and None) when its output folder is local."""
    for source in job.sources:
        here = source.here()
        job = relocate(job, source.mirror, here.mirror)
        wanted = [Path(p) for p in job.shard.inputs]
        here.pull(only=[p.relative_to(here.mirror).as_posix() for p in wanted
                        if here.mirror in p.parents])
    return job, job.store.here() if job.store is not None else None


def _run_and_record(task_fn: Callable[[Any, ProgressFn], Stats], stats_type: type[Stats],
                    job: _Job, progress: ProgressFn) -> Stats:
    """Runs on the worker: drop a stale record, run the stage's shard function (which puts
    its outputs in place), then write the completion record.

    A job can run twice in one attempt: Dask recomputes a finished task whose result lived on
    a worker that then died. The second execution finds this attempt's record and returns its
    stats without touching anything (dropping the record first would leave the shard without
    one if the client, which already has the result, ends the run before it is rewritten).
    For a run on a URL the outputs and then the record are uploaded from the worker, and the
    attempt's record counts only once it is on the store: the first execution may have run on
    a worker with another disk, or died between writing its record here and uploading it."""
    job, store = _on_this_machine(job)
    if store is None or store.fetch_if_there(job.record):
        finished = read_record(job.record, stats_type, attempt=job.attempt)
        if finished is not None:
            return finished
    Path(job.record).unlink(missing_ok=True)
    stats = task_fn(job.shard.task, progress)
    write_record(job.record, stats, attempt=job.attempt)
    if store is not None:
        store.upload_shard(job.shard.outputs, job.record)
    return stats


def _finished(stage: ShardedStage, shard: Shard) -> Stats | None:
    """The shard's recorded stats when it finished cleanly (no failed shards), else None."""
    if not all(Path(output).exists() for output in shard.outputs):
        return None
    stats = read_record(record_path(stage.output_dir, shard.part), stage.stats_type)
    return stats if stats is not None and not stats.failed_shards else None


def plan(stage: ShardedStage) -> tuple[list[_Job], Stats]:
    """The jobs left to run and the summed stats of the shards already finished."""
    done = stage.stats_type()
    jobs = []
    attempt = uuid.uuid4().hex
    store = remote_folder_holding(stage.output_dir)  # None also for ingest's staging beside
    sources = remote_folders()
    for shard in stage.shards:
        finished = _finished(stage, shard)
        if finished is not None:
            done = done + finished
        else:
            jobs.append(_Job(shard, str(record_path(stage.output_dir, shard.part)), attempt,
                             store, sources))
    return jobs, done


def run_sharded(stage: ShardedStage, executor: ExecutorConfig, progress: bool = True,
                before_run: Callable[[], None] | None = None) -> StageSummary:
    """Run every unfinished shard of ``stage``; ``before_run`` is called only when some are
    left (e.g. to write the stage's own record). An executor starts only then. Failed shards
    are named in the summary, never raised."""
    started = time.perf_counter()
    for directory in (stage.output_dir, stage.output_dir / "_done"):
        remove_stale_temporaries(directory)
    jobs, done = plan(stage)
    now = stage.stats_type()
    failures: dict[str, str] = {}
    if jobs:
        running = make_executor(executor)  # first: a scheduler that is down writes nothing
        try:
            if before_run is not None:
                before_run()
            now, failures = _execute(stage, jobs, running, progress)
        finally:
            running.close()
        if jobs[0].store is not None:
            jobs[0].store.pull()  # what workers on other machines uploaded
    total = len(stage.shards)
    logger.info("%s: %d shards run, %d already done", stage.name, len(jobs), total - len(jobs))
    for name, error in sorted(failures.items()):
        logger.error("shard %s failed: %s", name, error)
    return StageSummary(stats=done + now, now=now, shards_total=total,
                      shards_skipped=total - len(jobs), task_failures=failures,
                      wall_seconds=time.perf_counter() - started)


def _execute(stage: ShardedStage, jobs: list[_Job], executor: Executor,
             progress: bool) -> tuple[Stats, dict[str, str]]:
    bar = Progress(stage.name, stage.progress_total([j.shard.task for j in jobs]), len(jobs),
                   enabled=progress, unit=stage.unit)
    stats = stage.stats_type()
    failures: dict[str, str] = {}
    try:
        task_fn = functools.partial(_run_and_record, stage.task_fn, stage.stats_type)
        for job, outcome in executor.map(task_fn, jobs, bar.update):
            if isinstance(outcome, TaskFailure):
                failures[job.shard.name] = outcome.error
            else:
                stats = stats + outcome
            bar.shard_done()
    finally:
        bar.close()
    return stats, failures
