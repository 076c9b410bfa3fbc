"""img2dataset webdataset shards: finding them and streaming their samples.

img2dataset writes, per shard, ``NNNNN.tar`` (members ``{key}.jpg``, ``{key}.txt``,
``{key}.json``), ``NNNNN.parquet`` (one row per attempted sample) and ``NNNNN_stats.json``.

A shard may come from someone else, so reading it is bounded and never trusts a member: a
member's declared size is checked against a cap before it is read, links, devices and
path-like or non-UTF-8 names are not read, a key that occurs twice is reported, and a
compressed tar (gzip, bzip2, xz) is read as such.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.errors import UserError
from curate.io.statuses import BAD_MEMBER, DUPLICATE_KEY, TOO_LARGE, SampleError
from curate.io.storage import (
    Location,
    StorageError,
    base_name,
    file_size,
    is_url,
    list_pool,
    open_pool_file,
)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # a member declaring more is not read (images are far less)
_COMPRESSION_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}


class PoolError(UserError):
    """A pool that cannot be read at all; the message names the path and the problem."""


StorageOptions = Mapping[str, Any] | None  # fsspec options of a pool on a URL (no secrets)


@dataclass(frozen=True)
class Shard:
    """One input shard: its index (part number), name and files (paths, or URLs as str)."""

    index: int
    name: str
    tar: Location
    parquet: Location | None
    stats: Location | None
    fingerprints: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def add_tar_member(
    archive: tarfile.TarFile, name: str, data: bytes, *, mtime: int, mode: int = 0o644,
    owner: str = "",
) -> None:
    """Add bytes as a regular member with fixed metadata, so equal input gives equal tars."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = owner
    archive.addfile(info, io.BytesIO(data))


def find_shards(pool: Location, options: StorageOptions = None) -> list[Shard]:
    """The pool's shards (a folder, or a prefix on object storage), ordered by name; a clear
    error for a missing, unreachable or empty pool."""
    pool = pool.rstrip("/") if is_url(pool) else Path(pool)
    try:
        entries = list_pool(pool, options)
    except StorageError as exc:
        raise PoolError(str(exc)) from exc
    tars = sorted(name for name in entries if name.endswith(".tar"))
    if not tars:
        raise PoolError(f"pool {pool} holds no shards (*.tar)")
    stems = [name[: -len(".tar")] for name in tars]
    numeric = all(stem.isdigit() for stem in stems)
    shards = []
    for position, (tar, stem) in enumerate(zip(tars, stems, strict=True)):
        parquet = entries.get(f"{stem}.parquet")
        stats = entries.get(f"{stem}_stats.json")
        parquet = parquet if parquet is not None and parquet.is_file else None
        shards.append(
            Shard(
                index=int(stem) if numeric else position,
                name=stem,
                tar=entries[tar].location,
                parquet=parquet.location if parquet else None,
                stats=stats.location if stats is not None and stats.is_file else None,
                fingerprints={"tar": entries[tar].fingerprint(),
                              **({"parquet": parquet.fingerprint()} if parquet else {})},
            )
        )
    return shards


def split_member_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first '.' of the file name."""
    directory, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, extension.lower() if dot else ""


@dataclass
class TarSample:
    """The members of one sample, by extension (``jpg``, ``txt``, ``json``...)."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    problem: SampleError | None = None  # set: the sample must not be used (status, reason)

    def refuse(self, status: str, reason: str) -> None:
        """Mark the sample unusable; the first problem found is the one reported."""
        if self.problem is None:
            self.problem = SampleError(status, reason)

    def image(self) -> tuple[str, bytes] | None:
        for extension in IMAGE_EXTENSIONS:
            if extension in self.members:
                return extension, self.members[extension]
        return None

    def caption(self) -> str | None:
        raw = self.members.get("txt")
        return raw.decode("utf-8", errors="replace") if raw is not None else None


@dataclass
class TarReadResult:
    """Set once a shard has been read: an error when the tar ended early or was unreadable."""

    error: str | None = None
    samples_read: int = 0
    duplicate_keys: set[str] = field(default_factory=set)  # keys seen in two places


def compression(path: Location, options: StorageOptions = None) -> str | None:
    """The compression of a tar file by its first bytes (gzip, bzip2, xz), or None."""
    with open_pool_file(path, options) as handle:
        return _compression(handle.read(6))


def _compression(head: bytes) -> str | None:
    return next((name for magic, name in _COMPRESSION_MAGIC.items() if head.startswith(magic)),
                None)


def _missing_end_marker(size: int, archive: tarfile.TarFile) -> bool:
    """A plain tar ends with two zero blocks after its last member; a cut one does not."""
    return size < archive.offset + 2 * tarfile.BLOCKSIZE


def _name_problem(name: str) -> str | None:
    """Why a member name cannot name a sample: not UTF-8, absolute, or with '.', '..' or
    empty path components or control characters; None when it is fine."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if name.startswith("/") or any(part in {"", ".", ".."} for part in name.split("/")):
        return "is path-like"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return "holds control characters"
    return None


def _read_member(archive: tarfile.TarFile, info: tarfile.TarInfo, sample: TarSample,
                 extension: str, max_member_bytes: int) -> None:
    """Read one member into ``sample``, or mark the sample (bounded: nothing unsafe is read)."""
    shown = repr(info.name)
    if problem := _name_problem(info.name):
        sample.refuse(BAD_MEMBER, f"member {shown} {problem}")
    elif not info.isfile():
        kind = "link" if info.issym() or info.islnk() else "device or special file"
        sample.refuse(BAD_MEMBER, f"member {shown} is a {kind}, not a file")
    elif info.size > max_member_bytes:
        sample.refuse(TOO_LARGE, f"member {shown} declares {info.size} bytes, above the cap "
                                 f"of {max_member_bytes}")
    elif extension in sample.members:
        sample.refuse(DUPLICATE_KEY, f"member {shown} occurs twice")
    else:
        handle = archive.extractfile(info)
        sample.members[extension] = handle.read() if handle else b""


def repeated_keys(path: Location, options: StorageOptions = None) -> set[str]:
    """Keys that occur in two places of a tar (a headers-only pass: member data is skipped, not
    read), so that a caller writing samples out can leave every copy of them aside."""
    seen: set[str] = set()
    repeated: set[str] = set()
    previous = None
    try:
        with open_pool_file(path, options) as handle, \
                tarfile.open(fileobj=handle, mode="r:*") as archive:
            for info in archive:
                if info.isdir():
                    continue
                key, _ = split_member_name(info.name)
                if key != previous and key in seen:
                    repeated.add(key)
                seen.add(key)
                previous = key
    except (tarfile.TarError, EOFError, OSError):
        pass  # the reading pass names the damage
    return repeated


def iter_tar_samples(path: Location, result: TarReadResult,
                     max_member_bytes: int = MAX_MEMBER_BYTES, *,
                     options: StorageOptions = None) -> Iterator[TarSample]:
    """Stream complete samples from a tar (plain or compressed) in order.

    ``path`` is a local path or a URL (read through :mod:`curate.io.storage` with ``options``).
    A truncated or unreadable tar (or one the storage cannot serve) stops the stream: the
    samples completed before the damage are yielded, the sample being read when it broke is
    not, and ``result.error`` says why.
    A sample with an unusable member carries ``problem``; a key met again after other keys
    is yielded with a ``duplicate_key`` problem and listed in ``result.duplicate_keys``, so
    the caller can void its first copy too.
    """
    compressed = None
    try:
        with open_pool_file(path, options) as handle:
            compressed = _compression(handle.read(6))
            handle.seek(0)
            size = file_size(handle)
            yield from _stream_samples(handle, result, max_member_bytes, size, compressed,
                                       base_name(path))
    except (tarfile.TarError, EOFError, OSError) as exc:
        kind = f"{compressed}-compressed tar" if compressed else "tar"
        result.error = f"{base_name(path)}: unreadable or truncated {kind} ({exc})"


def _stream_samples(handle: Any, result: TarReadResult, max_member_bytes: int, size: int,
                    compressed: str | None, name: str) -> Iterator[TarSample]:
    """The samples of an open tar; a read error propagates, the sample in hand not yielded."""
    current: TarSample | None = None
    seen: set[str] = set()
    with tarfile.open(fileobj=handle, mode="r|*") as archive:
        for info in archive:
            if info.isdir():
                continue
            key, extension = split_member_name(info.name)
            if current is not None and key != current.key:
                result.samples_read += 1
                yield current
                current = None
            if current is None:
                current = TarSample(key=key)
                if key in seen:
                    result.duplicate_keys.add(key)
                    current.refuse(DUPLICATE_KEY, f"key {key!r} occurs twice in the shard")
                seen.add(key)
            _read_member(archive, info, current, extension, max_member_bytes)
            if current.problem is not None and current.problem.status == DUPLICATE_KEY:
                result.duplicate_keys.add(key)
        if compressed is None and _missing_end_marker(size, archive):
            result.error = f"{name}: truncated tar (ends after member data, no end marker)"
            return
    if current is not None:
        result.samples_read += 1
        yield current
