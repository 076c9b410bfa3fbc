"""The executor protocol, the in-process executor, and the factory."""

from __future__ import annotations

import logging
import math
import os
import threading
import traceback
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from curate.errors import UserError

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]
TaskFn = Callable[[Any, ProgressFn], Any]
T = TypeVar("T")

_worker_slot = 0
_task_threads: int | None = None


def current_worker_slot() -> int:
    """This worker's ordinal (0 in-process); a GPU worker uses it to pick its device."""
    return _worker_slot


def set_worker_slot(slot: int) -> None:
    global _worker_slot
    _worker_slot = slot


def current_task_threads() -> int | None:
    """The torch threads a task may use here (the executor's ``threads_per_task``; None when
    the machine decides, as on an existing cluster)."""
    return _task_threads


def set_task_threads(threads: int | None) -> None:
    global _task_threads
    _task_threads = threads


def available_cores() -> int:
    """Cores this process may use (CPU affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


GPU_WORKERS_MAX = 8  # worker processes feeding one GPU
GPU_WORKER_OVERHEAD = 6 * 2**30  # GPU bytes a worker needs beside the weights (context,
# activations of a batch of 256, the decoder's buffers)


def auto_workers(gpus: int = 0, gpu_memory: int | None = None, weights: int = 0) -> int:
    """Local workers when none are asked for.

    On GPUs, several per GPU (worker *i* uses GPU *i* mod ``gpus``): one process's Python
    (reading tars, tokenising, launching the decoder and the model) feeds a GPU only so fast.
    On an H200 with 16 cores (benchmarks/score_gpu.py, ViT-B-32, fp16) the stage scored 1,696
    samples/s with 1 worker, 2,664-3,031 with 4 and 3,703 with 8. Up to 8 per GPU, each with
    two cores and, where ``gpu_memory`` (the smallest GPU's bytes) is known, room on it for
    the model's ``weights`` (bytes) and 6 GiB more.
    On CPU, workers of at most 4 torch threads, and at least two where there are two cores, so
    that one worker's decoding does not stall a whole thread team (2 cores,
    benchmarks/score_throughput.py: ViT-B-32 13.0-13.4 samples/s with 1 worker x 2 threads,
    13.5-14.3 with 2 x 1; ViT-S-32 36 against 34-38).
    """
    cores = available_cores()
    if gpus:
        per_gpu = min(GPU_WORKERS_MAX, max(1, cores // (2 * gpus)))
        if gpu_memory:
            per_gpu = min(per_gpu, max(1, gpu_memory // (weights + GPU_WORKER_OVERHEAD)))
        return gpus * per_gpu
    return max(min(cores, 2), math.ceil(cores / 4))


@dataclass(frozen=True)
class TaskFailure:
    """A task that raised on every attempt: which one, and the last error."""

    task: Any
    error: str


TaskOutcome = Any  # the task function's return value, or a TaskFailure


class Executor(Protocol):
    """Runs ``fn(task, progress)`` for every task; yields each outcome as it completes."""

    threads_per_task: int | None

    def map(
        self, fn: TaskFn, tasks: list[Any], progress: ProgressFn
    ) -> Iterator[tuple[Any, TaskOutcome]]: ...

    def close(self) -> None: ...


def describe_exception(exc: BaseException) -> str:
    """One line: the exception type and message, with where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


class InProcessExecutor:
    """Runs tasks one after another in this process (``--workers 0``); retries failures."""

    def __init__(self, retries: int = 2) -> None:
        self.retries = retries
        self.threads_per_task = available_cores()

    def map(
        self, fn: TaskFn, tasks: list[Any], progress: ProgressFn
    ) -> Iterator[tuple[Any, TaskOutcome]]:
        set_task_threads(self.threads_per_task)
        for task in tasks:
            yield task, self._run_with_retries(fn, task, progress)

    def _run_with_retries(self, fn: TaskFn, task: Any, progress: ProgressFn) -> TaskOutcome:
        for attempt in range(self.retries + 1):
            reported = 0

            def counted(count: int) -> None:
                nonlocal reported
                reported += count
                progress(count)

            try:
                return fn(task, counted)
            except Exception as exc:
                progress(-reported)  # the retry reports these samples again
                error = describe_exception(exc)
                logger.warning("task %s failed (attempt %d): %s", task, attempt + 1, error)
        return TaskFailure(task=task, error=error)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class ExecutorConfig:
    """``workers=0`` runs in-process, None picks ``auto_workers``; ``scheduler`` joins an
    existing Dask cluster."""

    workers: int | None = 1
    scheduler: str | None = None
    retries: int = 2

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 0:
            raise UserError(f"--workers must be 0 or more, got {self.workers}")
        if self.retries < 0:
            raise UserError(f"retries must be 0 or more, got {self.retries}")


def make_executor(config: ExecutorConfig) -> Executor:
    """The executor a config asks for (Dask is imported only when needed)."""
    if config.scheduler is None and config.workers == 0:
        return InProcessExecutor(retries=config.retries)
    from curate.executor.dask import DaskExecutor

    workers = auto_workers() if config.workers is None else config.workers
    return DaskExecutor(workers, config.scheduler, config.retries)


def start_workers_early(config: ExecutorConfig) -> None:
    """Begin, in a background thread, what a local Dask cluster's workers start from (a
    forkserver that imports torch and open_clip, about 5 s), so that it overlaps the stage's
    own set-up; ``make_executor`` later finds it running. Nothing for other executors."""
    if config.scheduler is not None or config.workers == 0:
        return

    def start() -> None:
        try:
            from curate.executor.forkserver import start_forkserver

            start_forkserver()
        except Exception as exc:  # the cluster's own start reports any real problem
            logger.debug("early worker start failed: %s", describe_exception(exc))

    threading.Thread(target=start, name="start-workers-early", daemon=True).start()


_LOADED: dict[Hashable, Any] = {}
_LOADED_LOCK = threading.RLock()  # a load may itself load_once (a scorer kind, its model)


def load_once(key: Hashable, load: Callable[[], T]) -> T:
    """This process's object for ``key``: ``load()`` on first use, then kept (one model load
    per worker, whatever the number of tasks it runs)."""
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED[key] = load()
        return _LOADED[key]
