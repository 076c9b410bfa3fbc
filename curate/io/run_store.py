"""Runs on object storage (``--run s3://bucket/runs/r1``), and other folders a command reads or
writes whole (``export --out``, ``reinforce SHARDS --out``).

A run on a URL is worked on through a local mirror, ``$FILTER_POOL_CACHE/runs/<sha>/`` (default
``~/.cache/filter-pool/runs``): a command pulls the run's files that changed on the store,
works on the mirror exactly as on a local run (its locks, staging folders and DuckDB views are
local), and pushes what it changed. Object stores have no rename, so a push keeps the order
that makes each write atomic for readers:

1. completion records and run records that changed or are gone are deleted first (a reader then
   trusts none of the parts they covered);
2. data files (Parquet parts, ``.npy``) are uploaded or deleted;
3. completion records (``_done/*.json``), then the other records, ``run.json`` last.

Every object is written whole by one PUT, so a reader sees either the old or the new file. A
sharded stage's workers need no shared disk: each fetches the inputs its shard names into its
own mirror and uploads its outputs, then its completion record (:meth:`RemoteRun.upload_shard`).

What the mirror has synced is kept beside it (``<sha>.sync.json``: each file's size, mtime and
the store's ETag), so a pull downloads only what changed and a push uploads only what the
command wrote; a file of equal bytes (same MD5 as the store's ETag) is not sent again.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import os
import re
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.errors import UserError
from curate.io.run_lock import (
    LOCK_NAME,
    OUTPUT_LOCKS,
    RemoteLock,
    RemoteLockedError,
    live_output_lock,
)
from curate.io.storage import _filesystem, check_storage_options, is_url, storage_error
from curate.io.workspace import file_md5

CACHE_ENV = "FILTER_POOL_CACHE"
OPTIONS_ENV = "FILTER_POOL_STORAGE_OPTIONS"  # JSON fsspec options for runs on a URL
RECORD_FILE = "run.json"
_active: contextvars.ContextVar[tuple[RemoteRun, ...]] = contextvars.ContextVar(
    "remote_folders", default=())


class RunStoreError(UserError):
    """A run on a URL that cannot be listed, read or written; names it and the reason."""


def cache_root() -> Path:
    """Where run mirrors live: ``$FILTER_POOL_CACHE/runs`` or ``~/.cache/filter-pool/runs``."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base) if base else Path.home() / ".cache" / "filter-pool") / "runs"


def env_storage_options() -> dict[str, Any]:
    """``$FILTER_POOL_STORAGE_OPTIONS`` as checked fsspec options (no credentials)."""
    text = os.environ.get(OPTIONS_ENV, "").strip()
    if not text:
        return {}
    try:
        return check_storage_options(json.loads(text))
    except ValueError as exc:
        raise UserError(f"{OPTIONS_ENV} is not valid JSON ({exc})") from None


def _is_hidden(relative: str) -> bool:
    """Locks, staging folders and temporaries: local to one machine, never synced."""
    return any(part.startswith(".") for part in relative.split("/"))


def _push_rank(relative: str) -> int:
    """Upload order: data, completion records, other records, run.json."""
    if relative == RECORD_FILE:
        return 3
    if relative.endswith(".json"):
        return 1 if "/_done/" in f"/{relative}" else 2
    return 0


def _is_record(relative: str) -> bool:
    return relative.endswith(".json")


_PART = re.compile(r"^(?P<folder>.+)/(?P<part>part-\d+)\.[^/]+$")


def _unrecorded(files: Collection[str]) -> set[str]:
    """Parts the store holds without their completion record (a writer stopped between the
    two uploads): not trusted, so not pulled. A part's record is ``FOLDER/_done/PART.json``
    (embeddings: the scorer's ``scores/NAME/_done``); folders with no records at all (tables
    a stage writes whole) are trusted as they are."""
    recorded = {r for r in files if "/_done/" in r}
    folders = {r.rsplit("/_done/", 1)[0] for r in recorded}
    untrusted = set()
    for relative in files:
        match = _PART.match(relative)
        if match is None or "/_done/" in relative:
            continue
        folder = match["folder"]
        if folder.startswith("embeddings/"):
            folder = "scores/" + folder[len("embeddings/"):]
        if folder in folders and f"{folder}/_done/{match['part']}.json" not in recorded:
            untrusted.add(relative)
    return untrusted


def _stat_key(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


@dataclass(frozen=True)
class RemoteRun:
    """A run on a URL and its local mirror. Picklable: it travels with a shard's job to the
    worker, whose own mirror (its own ``$FILTER_POOL_CACHE``) may differ from the client's."""

    url: str
    options: Mapping[str, Any] = field(default_factory=dict)
    mirror: Path = field(default=Path())

    @classmethod
    def of(cls, url: str, options: Mapping[str, Any] | None = None) -> RemoteRun:
        url = url.rstrip("/")
        name = hashlib.sha256(url.encode()).hexdigest()[:20]
        return cls(url, dict(options or {}), cache_root() / name)

    def here(self) -> RemoteRun:
        """The same run with this machine's mirror (on a worker: its own cache)."""
        return RemoteRun.of(self.url, self.options)

    @property
    def sync_file(self) -> Path:
        return self.mirror.with_name(f"{self.mirror.name}.sync.json")

    # -- the store -------------------------------------------------------------------------

    def _fs(self) -> tuple[Any, str]:
        try:
            return _filesystem(self.url, self.options)
        except Exception as exc:
            raise RunStoreError(str(storage_error(exc, self.url, "run"))) from exc

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise RunStoreError(str(storage_error(exc, what, "run"))) from exc

    def listing(self) -> dict[str, dict[str, Any]]:
        """The run's files on the store: relative name -> {size, etag}; hidden names skipped."""
        filesystem, root = self._fs()
        filesystem.invalidate_cache()  # other processes (workers, machines) write here too
        try:
            found = self._call(self.url, filesystem.find, root, detail=True, withdirs=False)
        except FileNotFoundError as exc:
            if "bucket" in str(exc).lower():
                raise RunStoreError(str(storage_error(exc, self.url, "run"))) from exc
            return {}
        files = {}
        for name, info in found.items():
            relative = name[len(root):].lstrip("/")
            if relative and not _is_hidden(relative) and info.get("type", "file") == "file":
                etag = info.get("ETag") or info.get("etag")
                files[relative] = {"size": info.get("size"),
                                   "etag": str(etag).strip('"') if etag else None}
        return files

    def _remote(self, relative: str) -> str:
        return f"{self._fs()[1]}/{relative}"

    def _download(self, relatives: Sequence[str]) -> None:
        """Fetch files into the mirror (one batched call: s3fs runs them concurrently), each
        renamed into place once whole."""
        if not relatives:
            return
        partials = []
        for relative in relatives:
            target = self.mirror / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            partials.append(target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"))
        filesystem, _ = self._fs()
        try:
            self._call(self.url, filesystem.get, [self._remote(r) for r in relatives],
                       [str(p) for p in partials])
            for relative, partial in zip(relatives, partials, strict=True):
                os.replace(partial, self.mirror / relative)
        finally:
            for partial in partials:
                partial.unlink(missing_ok=True)

    def _upload(self, relatives: Sequence[str]) -> None:
        """Send mirror files to the store (one batched call; each object is one whole PUT)."""
        if relatives:
            filesystem, _ = self._fs()
            self._call(self.url, filesystem.put, [str(self.mirror / r) for r in relatives],
                       [self._remote(r) for r in relatives])

    def _delete(self, relatives: Sequence[str]) -> None:
        """Delete objects (batched; one that is already gone is no error)."""
        if relatives:
            filesystem, _ = self._fs()
            with contextlib.suppress(FileNotFoundError):
                self._call(self.url, filesystem.rm, [self._remote(r) for r in relatives])

    @property
    def lockable(self) -> bool:
        """S3 takes conditional writes; other stores are mirrored but not locked."""
        return self.url.startswith(("s3://", "s3a://"))

    def lock(self, name: str = LOCK_NAME, label: str | None = None) -> RemoteLock | None:
        """A writer lock of this folder (``name``: the whole folder, or ``.locks/<scope>.lock``
        for one output of a run), acquired; None on a store that is not S3."""
        if not self.lockable:
            return None
        filesystem, root = self._fs()
        lock = RemoteLock(filesystem, root, self.url, name, label)
        try:
            lock.acquire()
        except RemoteLockedError:
            raise
        except Exception as exc:  # the store refused or cannot be reached: one line
            raise RunStoreError(str(storage_error(exc, self.url, "run"))) from exc
        return lock

    def busy(self, outputs: bool) -> str | None:
        """A line naming another command's live lock: of the whole folder (``ingest``), or
        with ``outputs`` of any one output of the run; None when there is none."""
        if not self.lockable:
            return None
        filesystem, root = self._fs()
        try:
            if outputs:
                return live_output_lock(filesystem, root, self.url)
            return RemoteLock(filesystem, root, self.url).held_by_another()
        except Exception as exc:  # the store refused or cannot be reached: one line
            raise RunStoreError(str(storage_error(exc, self.url, "run"))) from exc

    # -- the mirror's sync record ---------------------------------------------------------

    def _synced(self) -> dict[str, dict[str, Any]]:
        if not self.sync_file.is_file():
            return {}
        try:
            return json.loads(self.sync_file.read_text())
        except ValueError:
            return {}  # a torn record: everything is compared again by content

    def _save(self, synced: Mapping[str, Any]) -> None:
        self.sync_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.sync_file.with_name(f".{self.sync_file.name}.{uuid.uuid4().hex[:8]}.tmp")
        partial.write_text(json.dumps(synced, sort_keys=True))
        os.replace(partial, self.sync_file)

    def local_files(self) -> dict[str, Path]:
        """The mirror's files that sync: relative name -> path."""
        files = {}
        if self.mirror.is_dir():
            for path in self.mirror.rglob("*"):
                relative = path.relative_to(self.mirror).as_posix()
                if path.is_file() and not path.is_symlink() and not _is_hidden(relative):
                    files[relative] = path
        return files

    def _same_bytes(self, path: Path, remote: Mapping[str, Any]) -> bool:
        """True when a local file holds the store's bytes (size, and MD5 against a plain
        ETag; a multipart or encrypted object's ETag is no MD5, so it counts as different)."""
        etag = remote.get("etag") or ""
        return (path.stat().st_size == remote.get("size") and len(etag) == 32
                and file_md5(path) == etag)

    # -- pull and push ----------------------------------------------------------------------

    def pull(self, only: Iterable[str] | None = None, skip: tuple[str, ...] = ()) -> int:
        """Bring the mirror up to the store: download files that are new or changed there
        (parts only with their completion record), delete mirrored files the store no longer
        has (unless changed here since). ``only``: just these relative names (a worker's
        inputs); ``skip``: prefixes the command does not read (``embeddings/``), left as they
        are. Returns how many files were fetched."""
        if only is not None:
            only = list(only)
            if not only:
                return 0
        synced = self._synced()
        remote = self.listing() if only is None else self._infos(only)
        local = self.local_files() if only is None else {
            r: self.mirror / r for r in only if (self.mirror / r).is_file()}
        untrusted = _unrecorded(remote) if only is None else set()
        wanted = []
        for relative, info in sorted(remote.items()):
            path = local.get(relative)
            known = synced.get(relative, {})
            if relative.startswith(skip) or relative in untrusted or (
                    path is not None and info["etag"] is not None and
                    known.get("etag") == info["etag"] and known.get("stat") == _stat_key(path)):
                continue
            if path is None or not self._same_bytes(path, info):
                wanted.append(relative)
        self._download(wanted)
        for relative in wanted:
            synced[relative] = {"etag": remote[relative]["etag"],
                                "stat": _stat_key(self.mirror / relative)}
        for relative in set(synced) - set(remote) if only is None else ():
            path = local.get(relative)
            if path is not None and synced[relative].get("stat") == _stat_key(path):
                path.unlink()  # gone from the store and unchanged here: replaced elsewhere
            del synced[relative]
        self._save(synced)
        return len(wanted)

    def _infos(self, relatives: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Size and ETag of named files on the store; a RunStoreError for one that is not."""
        filesystem, _ = self._fs()
        infos = {}
        for relative in relatives:
            remote = self._remote(relative)
            filesystem.invalidate_cache(remote)
            try:
                info = self._call(f"{self.url}/{relative}", filesystem.info, remote)
            except FileNotFoundError:
                raise RunStoreError(f"{self.url}: {relative} is not on the store") from None
            etag = info.get("ETag") or info.get("etag")
            infos[relative] = {"size": info.get("size"),
                               "etag": str(etag).strip('"') if etag else None}
        return infos

    def push(self, present: Collection[str] | None = None) -> int:
        """Send what changed in the mirror since the last sync, in the order that keeps the
        run consistent for readers (see the module docstring). A file the store has is deleted
        there only when it was in the mirror at ``present`` (the files after the command's
        pull: what the command itself deleted; default: every synced file). Returns files
        uploaded."""
        synced = self._synced()
        remote = self.listing()
        local = self.local_files()
        changed = []  # changed here since the last sync (what changed only there is not ours)
        for relative, path in local.items():
            if synced.get(relative, {}).get("stat") == _stat_key(path):
                continue
            if relative in remote and self._same_bytes(path, remote[relative]):
                synced[relative] = {"etag": remote[relative]["etag"], "stat": _stat_key(path)}
            else:
                changed.append(relative)
        gone = [r for r in remote if r not in local and r in (synced if present is None
                                                                 else present)]
        self._delete(sorted((r for r in {*changed, *gone} if _is_record(r) and r in remote),
                            key=_push_rank, reverse=True))  # stale records first
        self._delete([r for r in gone if not _is_record(r)])
        for relative in gone:
            synced.pop(relative, None)
        for rank in sorted({_push_rank(r) for r in changed}):
            self._upload(sorted(r for r in changed if _push_rank(r) == rank))
        if changed:
            now = self.listing()  # the ETags the store gave (one listing, not one ask a file)
            for relative in changed:
                synced[relative] = {"etag": (now.get(relative) or {}).get("etag"),
                                    "stat": _stat_key(local[relative])}
        self._save(synced)
        return len(changed)

    def fetch_if_there(self, path: str | Path) -> bool:
        """Download one file of this mirror (``path``) from the store; False when the store
        does not have it."""
        relative = Path(path).relative_to(self.mirror).as_posix()
        filesystem, _ = self._fs()
        remote = self._remote(relative)
        filesystem.invalidate_cache(remote)
        if not self._call(f"{self.url}/{relative}", filesystem.exists, remote):
            return False
        self.pull(only=[relative])
        return True

    def upload_shard(self, outputs: Iterable[str], record: str) -> None:
        """A worker's finished shard: its outputs, then its completion record (a stale one is
        deleted first). Paths are this mirror's."""
        record_relative = Path(record).relative_to(self.mirror).as_posix()
        self._delete([record_relative])
        self._upload([Path(o).relative_to(self.mirror).as_posix() for o in outputs
                      if Path(o).is_file()])
        self._upload([record_relative])


def active() -> tuple[RemoteRun, ...]:
    """The folders on a URL (runs, inputs, outputs) the current command works on."""
    return _active.get()


def holding(path: Path) -> RemoteRun | None:
    """The folder on a URL (a run, an output) whose mirror holds ``path``, if the current
    command works on one."""
    for store in _active.get():
        if store.mirror in Path(path).parents:
            return store
    return None


@dataclass
class _Session:
    """One command's work on a folder on a URL: what it pulled and the locks it holds."""

    store: RemoteRun
    skip: tuple[str, ...]
    present: set[str]  # the mirror's files after the (last) pull
    per_output: bool  # writers lock the outputs they write, not the folder
    locks: list[RemoteLock] = field(default_factory=list)


_sessions: dict[str, _Session] = {}  # a mirror -> the session of the command working on it


@contextlib.contextmanager
def run_location(run: str | Path, options: Mapping[str, Any] | None = None,
                 must_exist: bool = True, what: str = "run", skip: tuple[str, ...] = (),
                 writes: bool = True, per_output: bool = False) -> Iterator[Path]:
    """The local folder a command works on: ``run`` itself for a path; for a URL its mirror,
    pulled first and pushed after (also when the command fails, so finished shards count).
    ``must_exist``: a URL that holds no run is an error (every command but ingest). Any
    other folder on a URL (``what``: shards, an output) is mirrored the same way. ``skip``:
    prefixes the command never reads, not pulled (and never deleted on the store by it).
    ``writes``: the command holds a lock on S3 (curate/io/run_lock.py) from before the pull
    to after the push: the folder's, or with ``per_output`` one per output it writes (taken
    by :func:`lock_output` when the command starts writing it, and followed by a second pull);
    a read-only command takes none and pushes nothing."""
    if not is_url(str(run)):
        yield Path(run)
        return
    store = RemoteRun.of(str(run), {**env_storage_options(), **(options or {})})
    store.mirror.parent.mkdir(parents=True, exist_ok=True)
    per_output = per_output and writes
    session = _Session(store, skip, set(), per_output)
    if writes and not per_output and (lock := store.lock()) is not None:
        session.locks.append(lock)
    try:
        if writes and (per_output or what == "run") and (
                busy := store.busy(outputs=not per_output)):
            raise RemoteLockedError(busy)  # the whole run against a writer of an output, or back
        store.pull(skip=skip)
        session.present = set(store.local_files())
        if must_exist and what == "run" and not (store.mirror / RECORD_FILE).is_file():
            raise RunStoreError(f"{store.url} is not a run (no {RECORD_FILE} there); create "
                                f"it with `filter-pool ingest POOL --run {store.url}`")
        if must_exist and not (store.mirror.is_dir() and any(store.mirror.iterdir())):
            raise RunStoreError(f"{what} {store.url} holds nothing")
        token = _active.set((*_active.get(), store))
        _sessions[str(store.mirror)] = session
        try:
            yield store.mirror
        finally:
            _active.reset(token)
            del _sessions[str(store.mirror)]
            if writes:
                if any(lock.lost for lock in session.locks):
                    raise RunStoreError(
                        f"{store.url}: another command took this one's lock while it ran, so "
                        "nothing was pushed; its work stays in the local mirror and the same "
                        "command run again pushes it")
                store.push(session.present)
    finally:
        for lock in session.locks:
            lock.release()


def lock_output(run: Path, scope: str, what: str) -> bool:
    """Called when a command starts writing output ``scope`` of ``run``: for the mirror of a
    run on S3 worked on per output, take ``RUN/.locks/<scope>.lock`` on the store (held until
    the command's push), make sure no ``ingest`` holds the run, and pull again, so that the
    command sees what other machines pushed since its first pull (True then: what it read
    before may be stale). Elsewhere nothing (False)."""
    session = _sessions.get(str(Path(run)))
    if session is None or not session.per_output or not session.store.lockable:
        return False
    name = f"{OUTPUT_LOCKS}/{scope.replace('/', '-')}.lock"
    if any(lock.name == name for lock in session.locks):
        return False
    store = session.store
    lock = store.lock(name, f"{what} of {store.url}")
    if lock is None:
        return False
    session.locks.append(lock)  # released after the push, or after a refusal below
    if busy := store.busy(outputs=False):
        raise RemoteLockedError(busy)
    store.pull(skip=session.skip)
    session.present = set(store.local_files())
    return True


def relocate(task: Any, old: Path, new: Path) -> Any:
    """``task`` with every path (str or Path field, also nested dataclasses and tuples) under
    ``old`` moved under ``new``: a worker's mirror is its own."""
    if old == new:
        return task
    prefix = str(old)

    def move(value: Any) -> Any:
        if isinstance(value, Path) and (value == old or old in value.parents):
            return new / value.relative_to(old)
        if isinstance(value, str) and (value == prefix or value.startswith(prefix + os.sep)):
            return str(new) + value[len(prefix):]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.replace(value, **{f.name: move(getattr(value, f.name))
                                                 for f in dataclasses.fields(value) if f.init})
        if isinstance(value, tuple):
            return type(value)(move(v) for v in value) if not hasattr(value, "_fields") \
                else type(value)(*(move(v) for v in value))
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    return move(task)
