"""The forkserver that local Dask workers are forked from (no Dask import here).

A worker needs Dask, torch and open_clip before its first task: about 5 s of imports. Spawned
workers each import them (two in parallel took 6.4 s on 2 cores) and end with a full
interpreter shutdown (1-2 s with torch loaded). Forked from a forkserver that imported them
once, a worker starts in a fraction of a second and ends with ``os._exit``. The server only
imports; it never runs torch, so forking it is safe (no OpenMP or other threads yet).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver

WORKER_PRELOAD = ("distributed", "curate.score.scorer")


def set_worker_preload(preload: tuple[str, ...] = WORKER_PRELOAD) -> None:
    """What the forkserver imports when it starts (no effect once it runs)."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(preload))


def start_forkserver(preload: tuple[str, ...] = WORKER_PRELOAD) -> None:
    """Start the forkserver now; its imports run in the background. A no-op once it runs."""
    set_worker_preload(preload)
    multiprocessing.forkserver.ensure_running()
