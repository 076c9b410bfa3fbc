"""One writer per output: advisory locks (``flock``) that name their holder.

A run is locked shared by every command that writes into it (score, select, sweep, evaluate,
export reading it) and exclusively by ``ingest``, which may replace it; inside it, each output
(a scorer's tables, a subset, a sweep) has its own exclusive lock, so two scorers of one run
go together and two writers of the same scorer do not. The operating system drops a lock when
its process ends, so a killed command never leaves a stale one. Lock files are small hidden
files: ``.RUN.lock`` beside a run or output folder, ``RUN/.locks/<scope>.lock`` inside a run.
The mirror of a run on S3 takes the same output's lock on the store as well
(:func:`curate.io.run_store.lock_output`), so writers on other machines are kept apart too.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

from curate.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])
LOCKS_DIR = ".locks"  # inside a run: one lock file per output being written


class LockedError(UserError):
    """Another command is writing the same output."""


def beside(path: Path) -> Path:
    """The lock file of a folder that may not exist yet: ``.NAME.lock`` next to it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def inside(run: Path, scope: str) -> Path:
    """The lock file of one output inside a run (``scope``: ``score-dfn``, ``subset-top``)."""
    return Path(run) / LOCKS_DIR / f"{scope}.lock"


def _holder(handle_path: Path) -> str:
    try:
        record = json.loads(handle_path.read_text() or "{}")
    except (OSError, ValueError):
        record = {}
    if not record:
        return "another filter-pool command"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("since", 0)))
    return (f"`{record.get('command', 'filter-pool')}` (pid {record.get('pid')} on "
            f"{record.get('host')}, since {since})")


def _open_locked(lock_file: Path, mode: int) -> int | None:
    """A descriptor of ``lock_file`` holding ``mode``, or None when another process holds it.
    A lock file is removed by its last holder, so after locking we check that the path still
    names the file we locked (else someone removed it meanwhile: open the new one)."""
    for _ in range(20):  # bounded: each retry means another holder just removed the file
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(lock_file).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise LockedError(f"{lock_file}: the lock file keeps changing; another command is busy")


def _release(lock_file: Path, fd: int) -> None:
    """Remove the lock file when no one else holds it, then let go."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock_file.unlink(missing_ok=True)
        if lock_file.parent.name == LOCKS_DIR:
            with contextlib.suppress(OSError):  # not empty: another output's lock is there
                lock_file.parent.rmdir()
    except BlockingIOError:
        pass  # other shared holders: the last one removes it
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold(lock_file: Path, what: str, *, shared: bool = False) -> Iterator[None]:
    """Hold ``lock_file`` for the block; when another process holds it (exclusively, or at all
    for an exclusive request) stop at once with a message naming the holder."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_locked(lock_file, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    if fd is None:
        raise LockedError(f"{what} is being written by {_holder(lock_file)}; wait for it to "
                          "finish or stop it, then run this command again")
    try:
        if not shared:
            record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                      "command": " ".join(["filter-pool", *sys.argv[1:]])[:300]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        yield
    finally:
        _release(lock_file, fd)


@contextlib.contextmanager
def run_output(run: Path, scope: str, what: str) -> Iterator[bool]:
    """Write one output of a run (``what``: "scorer 'dfn'"): the run shared (no ingest may
    replace it meanwhile), the output ``scope`` exclusively. A folder that is not a run is
    not locked (the stage refuses it with its own message, and nothing is created there).
    Yields True when the run (a mirror of a run on S3) was pulled again under the lock, so
    that what the caller read before may be stale."""
    run = Path(run)
    if not (run / "run.json").is_file():
        yield False
        return
    from curate.io.run_store import lock_output

    with hold(beside(run), f"run {run}", shared=True), \
            hold(inside(run, scope), f"{what} of run {run}"):
        yield lock_output(run, scope, what)  # a run on S3: that output's lock on the store


def writes(locks: Callable[[Any], AbstractContextManager[Any]]) -> Callable[[F], F]:
    """Decorator of a stage ``fn(config, ...)``: it runs under ``locks(config)``, so another
    writer of the same output stops at once with a message naming it."""

    def decorate(stage: F) -> F:
        @functools.wraps(stage)
        def locked(config: Any, *args: Any, **kwargs: Any) -> Any:
            with locks(config):
                return stage(config, *args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate
