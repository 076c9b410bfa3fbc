"""One writer at a time for a run (or output folder) on S3, across machines.

A local run's writers hold ``flock`` locks that the operating system drops when a process
ends. An object store has no such thing, so a command that writes a folder on ``s3://`` first
creates ``FOLDER/.lock`` with a conditional PUT (``If-None-Match: *``: S3, MinIO and moto
refuse it when the object exists), naming its holder, and renews it every
``LEASE_SECONDS / 4`` from a background thread (``If-Match`` its own ETag). A lock whose
holder stopped renewing it for ``LEASE_SECONDS`` (a killed client, a lost machine), or whose
holder was a process of this host that is gone, is taken over with a conditional DELETE of
that very object. A second writer meanwhile gets one line naming the holder. Stores that are
not S3 (no conditional writes through fsspec) are not locked; the README says so.

Inside a run, writers of one output (a scorer, a subset, a sweep...) lock only that output:
``RUN/.locks/<scope>.lock``, the same kind of lease, so that machines write different outputs
of one run at once. ``ingest`` locks the whole run (``RUN/.lock``); each side checks for the
other's live lock after taking its own, so the two never run together.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Any

from curate.errors import UserError

logger = logging.getLogger(__name__)
LEASE_SECONDS = 120.0
LOCK_NAME = ".lock"  # hidden: never pulled, pushed or listed as a run file
OUTPUT_LOCKS = ".locks"  # inside a run on S3: one lease per output being written


class RemoteLockedError(UserError):
    """Another command (on this or another machine) is writing the folder on the store."""


def _alive_here(record: dict[str, Any]) -> bool:
    """True unless the holder was a process of this host that no longer exists."""
    if record.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(record.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def _mine(record: dict[str, Any]) -> bool:
    """True when the lock record names this very process."""
    return record.get("host") == socket.gethostname() and record.get("pid") == os.getpid()


def _live(record: dict[str, Any], age: float) -> bool:
    """True while the holder renews its lease and is not a process of this host that is gone."""
    return age < LEASE_SECONDS and _alive_here(record)


class RemoteLock:
    """The lease on ``bucket/key`` (an s3fs filesystem); ``acquire`` then ``release``."""

    def __init__(self, filesystem: Any, path: str, url: str, name: str = LOCK_NAME,
                 label: str | None = None) -> None:
        self._fs = filesystem
        self._bucket, _, prefix = path.partition("/")
        self._key = f"{prefix}/{name}" if prefix else name
        self._url = url
        self.name = name
        self.label = label or url  # what messages say is being written
        self._etag: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost = False  # set when another command broke the lease while this one held it

    def _record(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "command": " ".join(["filter-pool", *sys.argv[1:2]]),
                           "since": time.time(), "lease_seconds": LEASE_SECONDS}).encode()

    def _put(self, **condition: str) -> str:
        response = self._fs.call_s3("put_object", Bucket=self._bucket, Key=self._key,
                                    Body=self._record(), **condition)
        return str(response["ETag"]).strip('"')

    def _held(self) -> tuple[dict[str, Any], str, float] | None:
        """The lock object's record, ETag and seconds since it was last written; None when
        there is none."""
        path = f"{self._bucket}/{self._key}"
        try:
            self._fs.invalidate_cache(path)
            info = self._fs.info(path)
            text = self._fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text or b"{}")
        except ValueError:
            record = {}
        modified = info.get("LastModified")
        age = time.time() - modified.timestamp() if modified is not None else 0.0
        return record, str(info.get("ETag", "")).strip('"'), age

    def _busy(self, record: dict[str, Any], age: float) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("since", 0)))
        return (f"{self.label} is being written by `{record.get('command', '?')}` (pid "
                f"{record.get('pid')} on {record.get('host')}, since {since}); wait for it, "
                f"or, if it is gone, for its lease to run out (at most "
                f"{LEASE_SECONDS - age:.0f} s)")

    def held_by_another(self) -> str | None:
        """A line naming the live holder of this lock when another command holds it (a lease
        that ran out, or a holder of this host that is gone, counts as none)."""
        held = self._held()
        if held is None:
            return None
        record, _, age = held
        return self._busy(record, age) if _live(record, age) and not _mine(record) else None

    def acquire(self) -> None:
        """Take the lease, or raise RemoteLockedError naming its holder."""
        for _ in range(3):
            try:
                self._etag = self._put(IfNoneMatch="*")
                break
            except FileExistsError:
                held = self._held()
                if held is None:
                    continue  # released in between: try again
                record, etag, age = held
                if _mine(record):
                    self._etag = etag  # our own PUT, retried after its answer was lost
                    break
                if _live(record, age):
                    raise RemoteLockedError(self._busy(record, age)) from None
                logger.info("%s: taking over the lock of pid %s on %s (lease ran out)",
                            self._url, record.get("pid"), record.get("host"))
                with contextlib.suppress(OSError):  # another taker was first: the PUT decides
                    self._fs.call_s3("delete_object", Bucket=self._bucket, Key=self._key,
                                     IfMatch=etag)
        else:
            raise RemoteLockedError(f"{self._url}: the lock kept changing hands; try again")
        self._renewer = threading.Thread(target=self._renew, daemon=True,
                                         name="filter-pool-lease")
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(max(LEASE_SECONDS / 4, 1.0)):
            try:
                self._etag = self._put(IfMatch=self._etag or "")
            except OSError as exc:
                if isinstance(exc, FileNotFoundError) or exc.errno == errno.EINVAL:
                    self.lost = True  # deleted, or rewritten (If-Match refused): taken over
                    logger.error("%s: the lock was taken by another command (%s)", self._url,
                                 exc)
                    return
                logger.warning("%s: the lock could not be renewed (%s); trying again",
                               self._url, exc)

    def release(self) -> None:
        """Stop renewing and delete the lock if it is still this command's."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=30)
        if self._etag is not None and not self.lost:
            try:
                self._fs.call_s3("delete_object", Bucket=self._bucket, Key=self._key,
                                 IfMatch=self._etag)
            except OSError as exc:
                logger.warning("%s: the lock was not released (%s)", self._url, exc)


def live_output_lock(filesystem: Any, path: str, url: str) -> str | None:
    """A line naming a live holder of any output lock of the run at ``path``, else None."""
    folder = f"{path}/{OUTPUT_LOCKS}"
    filesystem.invalidate_cache(folder)
    try:
        names = [n.rsplit("/", 1)[-1] for n in filesystem.ls(folder, detail=False)]
    except FileNotFoundError:
        return None
    for name in sorted(names):
        scope = name.removesuffix(".lock")
        line = RemoteLock(filesystem, path, url, f"{OUTPUT_LOCKS}/{name}",
                          f"{scope} of {url}").held_by_another()
        if line is not None:
            return line
    return None
