"""Dask distributed executor: an embedded LocalCluster, or an existing cluster by address.

Each worker process keeps what a task function caches (the filter network) between tasks,
so a model is loaded once per worker. Workers report progress through Dask's event log.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import dask
from distributed import Client, LocalCluster, as_completed, get_worker
from distributed.utils import get_mp_context

from curate.errors import UserError
from curate.executor.base import (
    ProgressFn,
    TaskFailure,
    TaskFn,
    TaskOutcome,
    available_cores,
    describe_exception,
    set_task_threads,
    set_worker_slot,
)
from curate.executor.forkserver import set_worker_preload

logger = logging.getLogger(__name__)


def _use_forkserver() -> None:
    """Start local workers from the forkserver (``curate.executor.forkserver``)."""
    dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
    get_mp_context()  # Dask sets its own preload list once per process: then ours replaces it
    set_worker_preload()


def _quiet_distributed_logs() -> None:
    """Keep the embedded scheduler's INFO chatter out of a command's output unless -v."""
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logging.getLogger("distributed").setLevel(logging.WARNING)
        # At close, a worker still tearing torch down after 4 s is killed with a warning;
        # every result is written by then, so that is not news for the command's output.
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)


def _worker_slot(name: Any) -> int:
    try:
        return int(name)
    except (TypeError, ValueError):
        return 0


def _run_on_worker(fn: TaskFn, task: Any, topic: str, threads: int | None) -> Any:
    """Runs on a worker: set the worker's slot and threads, forward progress, undo it on
    failure."""
    worker = get_worker()
    set_worker_slot(_worker_slot(worker.name))
    set_task_threads(threads)
    reported = 0

    def progress(count: int) -> None:
        nonlocal reported
        reported += count
        worker.log_event(topic, count)

    try:
        return fn(task, progress)
    except BaseException:
        if reported:
            worker.log_event(topic, -reported)  # a retry reports these samples again
        raise


CONNECT_SECONDS = 15


def connect_scheduler(address: str, timeout: float = CONNECT_SECONDS) -> Client:
    """A client of the Dask scheduler at ``address``; one line naming it when it cannot be
    reached (down, wrong address, not a scheduler) within ``timeout`` seconds."""
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"--scheduler {address}: cannot reach the Dask scheduler ({reason}); "
                        "start it (`dask scheduler`) or check the address") from None


class DaskExecutor:
    """Runs tasks on Dask workers with retries; one worker thread each, torch threads split."""

    def __init__(self, workers: int, scheduler: str | None, retries: int = 2) -> None:
        self.retries = retries
        self.cluster: LocalCluster | None = None
        if scheduler:
            self.client = connect_scheduler(scheduler)
            self.threads_per_task: int | None = None  # the remote machines decide
            logger.info("using the Dask cluster at %s", scheduler)
        else:
            workers = max(1, workers)
            self.threads_per_task = max(1, available_cores() // workers)
            # Dask pins BLAS/OpenMP to one thread and trims malloc at 64 KiB in its workers;
            # a model worker wants its share of the cores and glibc's default allocator.
            dask.config.set({"distributed.nanny.pre-spawn-environ": {
                name: str(self.threads_per_task)
                for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
            }})
            _quiet_distributed_logs()
            _use_forkserver()
            self.cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                scheduler_kwargs={"dashboard": False},
                silence_logs=logging.ERROR,
            )
            self.client = Client(self.cluster)
            logger.info("started a local Dask cluster: %d workers, %d torch threads each",
                        workers, self.threads_per_task)

    def map(
        self, fn: TaskFn, tasks: list[Any], progress: ProgressFn
    ) -> Iterator[tuple[Any, TaskOutcome]]:
        topic = f"curate-progress-{uuid.uuid4().hex}"
        self.client.subscribe_topic(topic, lambda event: progress(event[1]))
        try:
            futures = {
                self.client.submit(
                    _run_on_worker, fn, task, topic, self.threads_per_task,
                    pure=False, retries=self.retries,
                ): task
                for task in tasks
            }
            for future in as_completed(futures):
                task = futures[future]
                try:
                    outcome: Any = future.result()
                except Exception as exc:
                    outcome = TaskFailure(task=task, error=describe_exception(exc))
                # the client holds the result now: a worker that dies later must not make the
                # scheduler recompute it
                future.release()
                yield task, outcome
        finally:
            self.client.unsubscribe_topic(topic)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
