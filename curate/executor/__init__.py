"""Executors run per-shard functions: in this process, or on Dask workers.

Only this package imports Dask. A stage hands an executor a plain function and a list of
tasks; the executor returns one outcome per task, in completion order.
"""

from curate.executor.base import (
    Executor,
    ExecutorConfig,
    TaskFailure,
    TaskFn,
    TaskOutcome,
    auto_workers,
    current_task_threads,
    current_worker_slot,
    load_once,
    make_executor,
    start_workers_early,
)

__all__ = [
    "Executor",
    "ExecutorConfig",
    "TaskFailure",
    "TaskFn",
    "TaskOutcome",
    "auto_workers",
    "current_task_threads",
    "current_worker_slot",
    "load_once",
    "make_executor",
    "start_workers_early",
]
