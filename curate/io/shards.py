"""img2dataset webdataset shards: finding them and streaming their samples.

img2dataset writes, per shard, ``NNNNN.tar`` (members ``{key}.jpg``, ``{key}.txt``,
``{key}.json``), ``NNNNN.parquet`` (one row per attempted sample) and ``NNNNN_stats.json``.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from curate.errors import UserError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")


class PoolError(UserError):
    """A pool that cannot be read at all; the message names the path and the problem."""


@dataclass(frozen=True)
class Shard:
    """One input shard: its index (part number), name and files."""

    index: int
    name: str
    tar: Path
    parquet: Path | None
    stats: Path | None


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


def find_shards(pool: Path) -> list[Shard]:
    """The pool's shards, ordered by name; a clear error for a missing or empty pool."""
    pool = Path(pool)
    if not pool.exists():
        raise PoolError(f"pool {pool} does not exist")
    if not pool.is_dir():
        raise PoolError(f"pool {pool} is not a directory")
    tars = sorted(pool.glob("*.tar"))
    if not tars:
        raise PoolError(f"pool {pool} holds no shards (*.tar)")
    numeric = all(t.stem.isdigit() for t in tars)
    shards = []
    for position, tar in enumerate(tars):
        parquet = tar.with_suffix(".parquet")
        stats = tar.with_name(f"{tar.stem}_stats.json")
        shards.append(
            Shard(
                index=int(tar.stem) if numeric else position,
                name=tar.stem,
                tar=tar,
                parquet=parquet if parquet.is_file() else None,
                stats=stats if stats.is_file() else None,
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


def _missing_end_marker(path: Path, archive: tarfile.TarFile) -> bool:
    """A plain tar ends with two zero blocks after its last member; a cut one does not."""
    if path.suffix != ".tar":
        return False
    return path.stat().st_size < archive.offset + 2 * tarfile.BLOCKSIZE


def iter_tar_samples(path: Path, result: TarReadResult) -> Iterator[TarSample]:
    """Stream complete samples from a tar in order.

    A truncated or unreadable tar stops the stream: the samples completed before the damage
    are yielded, the sample being read when it broke is not, and ``result.error`` says why.
    """
    current: TarSample | None = None
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                key, extension = split_member_name(info.name)
                if current is not None and key != current.key:
                    result.samples_read += 1
                    yield current
                    current = None
                if current is None:
                    current = TarSample(key=key)
                handle = archive.extractfile(info)
                current.members[extension] = handle.read() if handle else b""
            if _missing_end_marker(path, archive):
                result.error = f"{path.name}: truncated tar (ends after member data, no end marker)"
                return
    except (tarfile.TarError, EOFError, OSError) as exc:
        result.error = f"{path.name}: unreadable or truncated tar ({exc})"
        return
    if current is not None:
        result.samples_read += 1
        yield current
