"""Pool files on local disk or behind an fsspec URL (``s3://bucket/pool``, ``gs://``, ...).

Every read of a pool file goes through here: :func:`is_url` tells a URL from a path,
:func:`list_pool` lists a pool folder (or prefix) with sizes and etags/mtimes,
:func:`open_pool_file` opens one file for reading and :func:`pool_fingerprint` says what a
file was when it was read. Local paths take the plain ``open``/``os`` route and never load
fsspec; URLs go through fsspec (s3fs for ``s3://``).

Credentials and the endpoint come from the usual configuration of the filesystem (for S3:
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
``AWS_ENDPOINT_URL``, ``FSSPEC_S3_ENDPOINT_URL``, ``~/.aws``); extra options (an endpoint, a
region, a profile) may be passed as a dict that is stored in the run record, so it never holds
a secret: :func:`check_storage_options` refuses one. S3 connections get short connect and
read timeouts and few retries, so an endpoint that is not there fails in seconds.

Any failure of the storage layer (a connection that is refused, a bucket that does not exist,
credentials that are refused) surfaces as an ``OSError`` while a file is read, so readers that
treat an unreadable local file as damaged treat a remote one the same way, and as a
:class:`~curate.errors.UserError` naming the URL where a pool is listed.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from curate.errors import UserError

Location = str | Path  # a local path, or a URL (str) as fsspec takes it
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_COLLAPSED_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/+")  # a URL that went through Path()
_SECRET_WORDS = ("secret", "token", "password", "credential", "passwd")
_SECRET_NAMES = re.compile(r"(^|_)key($|_id$)|access_key", re.IGNORECASE)
S3_DEFAULTS: dict[str, Any] = {  # bounded: an endpoint that is not there fails in seconds
    "config_kwargs": {"connect_timeout": 3, "read_timeout": 15,
                      "retries": {"max_attempts": 2, "mode": "standard"}},
}
S3_RETRIES = 2  # s3fs's own retries of a failed call (its default: 5, with back-off)
_CONFIG_ENV = ("AWS_", "FSSPEC_")  # variables that change a filesystem: part of its cache key
_filesystems: dict[tuple[str, str, tuple[tuple[str, str], ...]], Any] = {}


class StorageError(UserError):
    """A pool location that cannot be listed or read; the message names it and the reason."""


@dataclass(frozen=True)
class PoolEntry:
    """One file (or folder) directly inside a pool folder or prefix."""

    name: str  # the base name
    location: Location  # its path or URL, as open_pool_file takes it
    is_file: bool
    size: int | None = None
    etag: str | None = None
    mtime: float | None = None

    def fingerprint(self) -> dict[str, Any]:
        """What the file was when listed: size and etag (object stores) or mtime (disks)."""
        return {"size": self.size, "etag": self.etag, "mtime": self.mtime}


def is_url(location: Location | None) -> bool:
    """True for ``scheme://...`` (s3://, gs://, memory://, file://), False for a path."""
    return isinstance(location, str) and _URL.match(location) is not None


def looks_like_url(location: Location) -> bool:
    """True for a URL, also one whose '//' a Path collapsed (``s3:/bucket``)."""
    return _COLLAPSED_URL.match(str(location)) is not None


def restored_url(location: Location) -> str:
    """A URL whose '//' a Path collapsed (``s3:/bucket``) written back as ``s3://bucket``."""
    return _COLLAPSED_URL.sub(r"\1://", str(location))


def as_location(location: Location) -> Location:
    """A URL unchanged (without a trailing '/'), anything else as a Path."""
    return location.rstrip("/") if is_url(location) else Path(location)


def absolute(location: Location) -> str:
    """The location as recorded in a run: a URL as given, a path resolved."""
    return str(location).rstrip("/") if is_url(location) else str(Path(location).resolve())


def base_name(location: Location) -> str:
    """The last component of a path or URL."""
    return str(location).rstrip("/").rsplit("/", 1)[-1] if is_url(location) else \
        Path(location).name


def join(location: Location, name: str) -> Location:
    """``name`` inside a folder or prefix."""
    return f"{str(location).rstrip('/')}/{name}" if is_url(location) else Path(location) / name


def check_storage_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Options for fsspec that may be stored in a run: a JSON object with no credentials."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise UserError("--storage-options takes a JSON object, e.g. "
                        '\'{"endpoint_url": "http://127.0.0.1:9000"}\'')
    secret = _secret_name(options)
    if secret is not None:
        raise UserError(
            f"--storage-options may not hold credentials ({secret!r}): it is stored in the run "
            "record; give them in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
            "AWS_SESSION_TOKEN or AWS_PROFILE)")
    return json.loads(json.dumps(dict(options)))  # a plain copy; fails here, not later


def parse_storage_options(text: str | None) -> dict[str, Any]:
    """``--storage-options JSON`` as a checked dict."""
    if text is None or not text.strip():
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise UserError(f"--storage-options is not valid JSON ({exc})") from None
    return check_storage_options(options)


def _secret_name(options: Any, prefix: str = "") -> str | None:
    if isinstance(options, Mapping):
        for name, value in options.items():
            lowered = str(name).lower()
            if any(word in lowered for word in _SECRET_WORDS) or _SECRET_NAMES.search(lowered):
                return f"{prefix}{name}"
            found = _secret_name(value, f"{prefix}{name}.")
            if found is not None:
                return found
    return None


def _filesystem(url: str, options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path inside it (cached per options and
    configuration environment: a changed endpoint or key gives a new client)."""
    import fsspec

    protocol = fsspec.core.split_protocol(url)[0] or "file"
    merged = dict(options or {})
    if protocol in ("s3", "s3a"):
        config = {**S3_DEFAULTS["config_kwargs"], **merged.get("config_kwargs", {})}
        merged["config_kwargs"] = config
    environment = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_CONFIG_ENV)))
    key = (protocol, json.dumps(merged, sort_keys=True, default=str), environment)
    filesystem = _filesystems.get(key)
    if filesystem is None:
        filesystem = fsspec.filesystem(protocol, skip_instance_cache=True, **merged)
        if protocol in ("s3", "s3a"):
            filesystem.retries = S3_RETRIES
        _filesystems[key] = filesystem
    return filesystem, filesystem._strip_protocol(url)


def _reason(exc: BaseException) -> str:
    """One line for a storage failure, naming what to check."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                "ClientConnectorError", "ProxyConnectionError"}:
        return f"cannot reach the storage endpoint ({text})"
    if "NoCredentialsError" in names:
        return "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or " \
               "AWS_PROFILE)"
    if isinstance(exc, PermissionError):
        return f"access refused ({text}); check the credentials in the environment"
    if isinstance(exc, FileNotFoundError):
        if "bucket" in text.lower():
            return f"the bucket does not exist ({text})"
        return "does not exist"
    return f"cannot be read ({type(exc).__name__}: {text})"


def storage_error(exc: BaseException, location: Location, what: str = "pool") -> StorageError:
    """A one-line UserError for a failure of the storage layer at ``location``."""
    return StorageError(f"{what} {location}: {_reason(exc)}")


def list_pool(location: Location, options: Mapping[str, Any] | None = None,
              what: str = "pool") -> dict[str, PoolEntry]:
    """The entries directly inside a pool folder (or prefix), by name; a StorageError when it
    does not exist, is not a folder, or cannot be reached."""
    if not is_url(location):
        folder = Path(location)
        if not folder.exists():
            raise StorageError(f"{what} {folder} does not exist")
        if not folder.is_dir():
            raise StorageError(f"{what} {folder} is not a directory")
        entries = {}
        for entry in folder.iterdir():
            stat = entry.stat() if entry.is_file() else None
            entries[entry.name] = PoolEntry(entry.name, entry, stat is not None,
                                            stat.st_size if stat else None, None,
                                            stat.st_mtime if stat else None)
        return entries
    url = str(location).rstrip("/")
    try:
        filesystem, path = _filesystem(url, options)
        listed = filesystem.ls(path, detail=True, refresh=True)
    except FileNotFoundError as exc:
        if "bucket" in str(exc).lower():
            raise storage_error(exc, url, what) from exc
        raise StorageError(f"{what} {url} does not exist (no object under that prefix)") from exc
    except Exception as exc:  # the storage layer raises many kinds; each becomes one line
        raise storage_error(exc, url, what) from exc
    if len(listed) == 1 and listed[0].get("type") == "file" and \
            listed[0]["name"].rstrip("/") == path.rstrip("/"):
        raise StorageError(f"{what} {url} is a file, not a folder or prefix")
    entries = {}
    for info in listed:
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        entries[name] = _entry(name, f"{url}/{name}", info)
    return entries


def _entry(name: str, url: str, info: Mapping[str, Any]) -> PoolEntry:
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    modified = info.get("LastModified") or info.get("mtime") or info.get("updated")
    mtime = modified.timestamp() if hasattr(modified, "timestamp") else \
        float(modified) if isinstance(modified, int | float) else None
    return PoolEntry(name, url, info.get("type") == "file", info.get("size"),
                     str(etag).strip('"') if etag else None, mtime)


def pool_fingerprint(location: Location, options: Mapping[str, Any] | None = None
                     ) -> dict[str, Any]:
    """Size and etag (object stores) or mtime (disks) of one pool file."""
    if not is_url(location):
        stat = Path(location).stat()
        return {"size": stat.st_size, "etag": None, "mtime": stat.st_mtime}
    try:
        filesystem, path = _filesystem(str(location), options)
        info = filesystem.info(path)
    except Exception as exc:
        raise storage_error(exc, location, "file") from exc
    return _entry(base_name(location), str(location), info).fingerprint()


def changed_since_ingest(shards: list[dict[str, Any]],
                         options: Mapping[str, Any] | None) -> str | None:
    """The first shard tar on a URL whose size or ETag now differs from what ingest recorded
    in ``run.json``, as a sentence; None when every one agrees. Local pools are not checked
    (their readers give every sample its status), nor are tars that are gone or a store that
    cannot be asked: the readers report those per sample."""
    recorded = [(s["tar"], s.get("fingerprint", {}).get("tar") or {}) for s in shards
                if s.get("tar") and is_url(s["tar"])]
    listings: dict[str, dict[str, PoolEntry]] = {}
    for url, before in recorded:
        if not before.get("etag"):
            continue
        folder = str(url).rsplit("/", 1)[0]
        try:
            listing = listings.setdefault(folder, list_pool(folder, options))
        except UserError:
            return None
        now = listing.get(base_name(url))
        if now is None:
            continue
        if (now.size, now.etag) != (before.get("size"), before["etag"]):
            return (f"pool file {url} changed since ingest (size {before.get('size')}, ETag "
                    f"{before['etag']}; now size {now.size}, ETag {now.etag}): its samples "
                    "would not match the run's pool table; ingest the pool again")
    return None


def tar_exists(location: Location, options: Mapping[str, Any] | None = None) -> bool:
    """False when the path or URL names no file; True when it does, and for a URL that cannot
    be asked (unreachable, refused): its reader then reports why it cannot read it."""
    if not is_url(location):
        return Path(location).is_file()
    try:
        filesystem, path = _filesystem(str(location), options)
        return filesystem.info(path).get("type") == "file"
    except FileNotFoundError:
        return False
    except Exception:  # the reader names the failure on the samples it could not read
        return True


class _RemoteFile(io.RawIOBase):
    """A remote file for reading whose failures, whatever the storage layer raises, are
    OSErrors naming the URL (tarfile, zipfile and pyarrow take it like a local file)."""

    def __init__(self, handle: Any, url: str) -> None:
        super().__init__()
        self._handle = handle
        self.name = url
        self.size = getattr(handle, "size", None)

    def _call(self, method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except OSError:
            raise
        except Exception as exc:
            raise OSError(f"{self.name}: {_reason(exc)}") from exc

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        return self._call(self._handle.read, -1 if size is None else size)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._call(self._handle.seek, offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def close(self) -> None:
        if not self.closed:
            try:
                self._handle.close()
            finally:
                super().close()


def open_pool_file(location: Location, options: Mapping[str, Any] | None = None) -> IO[bytes]:
    """A pool file opened for binary reading (a context manager); an OSError when it cannot
    be opened, for a path as for a URL."""
    if not is_url(location):
        return open(location, "rb")  # noqa: SIM115 (the caller closes it)
    url = str(location)
    try:
        filesystem, path = _filesystem(url, options)
        handle = filesystem.open(path, "rb")
    except OSError as exc:
        raise OSError(f"{url}: {_reason(exc)}") from exc
    except Exception as exc:
        raise OSError(f"{url}: {_reason(exc)}") from exc
    return _RemoteFile(handle, url)  # type: ignore[return-value]


class UnreadableFile(OSError):
    """A pool file the store (or disk) could not serve; the message names it and why."""


def fetch_file(location: Location, options: Mapping[str, Any] | None, target: Path) -> None:
    """Copy a pool file to the local ``target`` in 8 MiB reads. A failed read raises
    UnreadableFile naming the file; a failed write (a full disk) raises as it is; either way
    the partial copy is removed."""
    try:
        with open(target, "wb") as out:
            try:
                source = open_pool_file(location, options)
            except OSError as exc:
                raise UnreadableFile(str(exc)) from exc
            with source:
                while True:
                    try:
                        chunk = source.read(8 << 20)
                    except OSError as exc:
                        raise UnreadableFile(str(exc)) from exc
                    if not chunk:
                        break
                    out.write(chunk)
    except BaseException:
        Path(target).unlink(missing_ok=True)
        raise


def arrow_source(location: Location, options: Mapping[str, Any] | None,
                 stack: ExitStack) -> Any:
    """What pyarrow opens for a pool file: a local path itself, a URL's handle (open for the
    ``stack``), so pyarrow never picks a filesystem of its own."""
    if not is_url(location):
        return location
    return stack.enter_context(open_pool_file(location, options))


def file_size(handle: IO[bytes]) -> int:
    """The size of an open pool file (its position is kept)."""
    size = getattr(handle, "size", None)
    if isinstance(size, int):
        return size
    return os.fstat(handle.fileno()).st_size
