"""Training pairs: where they come from (shards or a run subset), and a dataset over them.

An index pass reads only tar headers and captions: per usable sample it records the tar, the
byte offset and size of the image member, and the caption. Images are then read by offset and
decoded inside DataLoader worker processes, so the model never waits on decode.

Augmentation randomness is a function of (seed, epoch, sample position), not of the worker or
process state, so a resumed run sees exactly the crops an uninterrupted one would.
"""

from __future__ import annotations

import io
import logging
import tarfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from curate.errors import UserError
from curate.io.pool_cache import RemoteFile, cached_copy
from curate.io.shards import IMAGE_EXTENSIONS, find_shards, split_member_name
from curate.io.storage import is_url
from curate.io.workspace import SUBSET_MANIFEST, RunPaths

logger = logging.getLogger(__name__)

MISSING_CAPTION = "missing_caption"
MISSING_IMAGE = "missing_image"
NOT_IN_TAR = "not_in_tar"
SHARD_UNREADABLE = "shard_unreadable"


class StringColumn:
    """Strings packed into one UTF-8 buffer with offsets. No per-string Python objects, so
    forked DataLoader workers share these pages instead of copying them on refcount writes."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        self.data = data
        self.offsets = offsets

    @classmethod
    def from_strings(cls, strings: Sequence[str]) -> StringColumn:
        encoded = [s.encode("utf-8") for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8")

    def take(self, positions: np.ndarray) -> StringColumn:
        return StringColumn.from_strings([self[i] for i in positions.tolist()])


@dataclass
class PairIndex:
    """Usable (image, caption) pairs, and how many samples were skipped and why."""

    tars: list[Path]
    tar_ids: np.ndarray  # int32 index into tars
    offsets: np.ndarray  # int64 byte offset of the image member's data
    sizes: np.ndarray  # int64 byte size of the image member
    captions: StringColumn
    keys: StringColumn
    skipped: Counter[str] = field(default_factory=Counter)
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.captions)

    def take(self, positions: Sequence[int] | np.ndarray) -> PairIndex:
        """A sub-index of the pairs at ``positions`` (same tars, no skip counts)."""
        pos = np.asarray(positions, dtype=np.int64)
        return PairIndex(
            tars=self.tars,
            tar_ids=self.tar_ids[pos],
            offsets=self.offsets[pos],
            sizes=self.sizes[pos],
            captions=self.captions.take(pos),
            keys=self.keys.take(pos),
            source=self.source,
        )

    def read_image_bytes(self, position: int) -> bytes:
        with open(self.tars[int(self.tar_ids[position])], "rb") as handle:
            handle.seek(int(self.offsets[position]))
            return handle.read(int(self.sizes[position]))


@dataclass
class _Builder:
    tars: list[Path] = field(default_factory=list)
    tar_ids: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def add_sample(
        self, tar_id: int, key: str, members: dict[str, tarfile.TarInfo], caption: str | None
    ) -> None:
        image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
        if image is None:
            self.skipped[MISSING_IMAGE] += 1
        elif caption is None or not caption.strip():
            self.skipped[MISSING_CAPTION] += 1
        else:
            self.tar_ids.append(tar_id)
            self.offsets.append(image.offset_data)
            self.sizes.append(image.size)
            self.captions.append(caption.strip())
            self.keys.append(key)

    def build(self, source: dict[str, Any]) -> PairIndex:
        return PairIndex(
            tars=self.tars,
            tar_ids=np.asarray(self.tar_ids, dtype=np.int32),
            offsets=np.asarray(self.offsets, dtype=np.int64),
            sizes=np.asarray(self.sizes, dtype=np.int64),
            captions=StringColumn.from_strings(self.captions),
            keys=StringColumn.from_strings(self.keys),
            skipped=self.skipped,
            source=source,
        )


def _index_tar(builder: _Builder, tar: Path, wanted: set[str] | None) -> set[str]:
    """Add the pairs of one tar (only ``wanted`` keys when given); return the keys seen."""
    tar_id = len(builder.tars)
    builder.tars.append(tar)
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    captions: dict[str, str] = {}
    try:
        with tarfile.open(tar, mode="r:") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                key, extension = split_member_name(info.name)
                if wanted is not None and key not in wanted:
                    continue
                groups.setdefault(key, {})[extension] = info
                if extension == "txt":
                    handle = archive.extractfile(info)
                    captions[key] = (handle.read() if handle else b"").decode(
                        "utf-8", errors="replace"
                    )
    except (tarfile.TarError, EOFError, OSError) as exc:
        logger.warning(
            "%s: unreadable or truncated tar (%s); using the samples read before it", tar, exc
        )
        builder.skipped[SHARD_UNREADABLE] += 1
    for key, members in groups.items():
        builder.add_sample(tar_id, key, members, captions.get(key))
    return set(groups)


def index_shards(pool: Path, progress: bool = False) -> PairIndex:
    """Index every (image, caption) pair of a folder of webdataset shards (img2dataset layout)."""
    shards = find_shards(Path(pool))
    builder = _Builder()
    for shard in tqdm(shards, desc="index shards", unit="shard", disable=not progress):
        _index_tar(builder, shard.tar, None)
    source = {"kind": "shards", "path": str(Path(pool).resolve()), "shards": len(shards)}
    return builder.build(source)


def _subset_dir(data: Path, subset: str | None) -> Path:
    if subset is not None:
        return RunPaths(data).subset_dir(subset)
    return data


def index_subset(data: Path, subset: str | None = None, progress: bool = False) -> PairIndex:
    """Index the samples of a run subset: ``RUN/subsets/NAME`` (or ``RUN`` with ``subset``).

    The subset's ``manifest.parquet`` lists shard and key of each kept sample; the run's
    ``run.json`` says where each shard's tar is.
    """
    subset_dir = _subset_dir(Path(data), subset)
    manifest = subset_dir / SUBSET_MANIFEST
    if not manifest.is_file():
        raise UserError(f"subset {subset_dir} has no manifest.parquet (make it with `select`)")
    run = subset_dir.parent.parent
    record = RunPaths(run).read_run()
    try:
        table = pq.read_table(manifest, columns=["shard", "key"])
    except Exception as exc:  # pyarrow raises several kinds for bad files
        raise UserError(f"{manifest}: cannot read shard and key columns ({exc})") from exc
    shards = {s["name"]: s for s in record.get("shards", [])}
    wanted: dict[str, set[str]] = {}
    for shard, key in zip(
        table.column("shard").to_pylist(), table.column("key").to_pylist(), strict=True
    ):
        wanted.setdefault(str(shard), set()).add(str(key))
    builder = _Builder()
    for shard in tqdm(sorted(wanted), desc="index subset", unit="shard", disable=not progress):
        tar = _local_tar(shards.get(shard, {}), record)
        if tar is None or not tar.is_file():
            logger.warning("subset shard %s: no tar on disk (%s)", shard, tar)
            builder.skipped[NOT_IN_TAR] += len(wanted[shard])
            continue
        seen = _index_tar(builder, tar, wanted[shard])
        if missing := len(wanted[shard] - seen):
            builder.skipped[NOT_IN_TAR] += missing
    source = {
        "kind": "subset",
        "path": str(subset_dir.resolve()),
        "shards": len(wanted),
        "selected": table.num_rows,
    }
    return builder.build(source)


def _local_tar(shard: dict[str, Any], record: dict[str, Any]) -> Path | None:
    """The shard's tar on this machine: its path, or for a pool on a URL this machine's copy
    (fetched once into the pool cache, checked against the size and ETag ingest recorded),
    since training reads image members by byte offset."""
    tar = shard.get("tar")
    if not tar or not is_url(tar):
        return Path(tar) if tar else None
    seen = (shard.get("fingerprint") or {}).get("tar") or {}
    remote = RemoteFile(str(record["source"]["path"]).rstrip("/"), str(tar), seen.get("size"),
                        seen.get("etag"), "the subset's images")
    return cached_copy(remote, record["source"].get("storage_options"))


def index_data(data: Path, subset: str | None = None, progress: bool = False) -> PairIndex:
    """Index DATA: a folder of shards, a run subset folder, or a run with ``subset``."""
    data = Path(data)
    if not data.exists():
        raise UserError(f"training data {data} does not exist")
    if subset is not None or (data / SUBSET_MANIFEST).is_file():
        index = index_subset(data, subset, progress)
    elif (data / "run.json").is_file():
        raise UserError(f"{data} is a run; name the subset to train on with --subset NAME")
    else:
        index = index_shards(data, progress)
    if len(index) == 0:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(index.skipped.items())) or "none read"
        raise UserError(f"{data}: no usable image-caption pairs (skipped: {reasons})")
    return index


def holdout_positions(n: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions of a seeded random split of ``n`` pairs into (train, held-out)."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[count:]), np.sort(order[:count])


def split_holdout(index: PairIndex, count: int, seed: int) -> tuple[PairIndex, PairIndex]:
    """A seeded random split into (train, held-out) with ``count`` held-out pairs."""
    train, held = holdout_positions(len(index), count, seed)
    return index.take(train), index.take(held)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of one draw of one sample."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class PairDataset(Dataset):
    """Decoded, transformed and tokenised pairs; items are addressed by (epoch, position).

    A sample that cannot be decoded yields ``None``; :func:`collate_pairs` drops it and counts it.
    """

    def __init__(
        self,
        index: PairIndex,
        transform: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        seed: int = 0,
    ) -> None:
        self.index = index
        self.transform = transform
        self.tokenizer = tokenizer
        self.seed = seed

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        epoch, position = item if isinstance(item, tuple) else (0, item)
        try:
            image = Image.open(io.BytesIO(self.index.read_image_bytes(position)))
            image = image.convert("RGB")
        except Exception as exc:  # Pillow raises many kinds for bad bytes
            logger.debug("sample %s: cannot decode (%s)", self.index.keys[position], exc)
            return None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, position))
            pixels = self.transform(image)
        tokens = self.tokenizer([self.index.captions[position]])[0]
        return pixels, tokens


def collate_pairs(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the decodable pairs of a micro-batch; the third value counts undecodable ones."""
    good = [item for item in items if item is not None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), len(items)
    images = torch.stack([g[0] for g in good])
    tokens = torch.stack([g[1] for g in good])
    return images, tokens, len(items) - len(good)


def epoch_loader(
    dataset: Dataset,
    sampler: EpochBatchSampler,
    workers: int,
    collate_fn: Callable[[list[Any]], Any],
) -> DataLoader:
    """A DataLoader over ``sampler``'s (epoch, position) batches; with workers, each prefetches
    four batches (pinned when CUDA is present)."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


class EpochBatchSampler:
    """Micro-batches of (epoch, position) items: a fresh seeded permutation each epoch,
    incomplete tails dropped, starting at micro-batch ``start`` of ``total``."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, total: int) -> None:
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.start = start
        self.total = total
        self.per_epoch = n // batch_size

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        epoch, within = divmod(self.start, self.per_epoch)
        produced = self.start
        while produced < self.total:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
            for b in range(within, self.per_epoch):
                if produced >= self.total:
                    return
                chunk = order[b * self.batch_size : (b + 1) * self.batch_size]
                yield [(epoch, p) for p in chunk]
                produced += 1
            epoch, within = epoch + 1, 0
