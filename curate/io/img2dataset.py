"""Writing shards in img2dataset's webdataset layout, exactly as its writer leaves them.

Per shard ``NNNNN``: ``NNNNN.tar`` (per successful sample ``{key}.jpg``, ``{key}.json``,
``{key}.txt``, adjacent, key order), ``NNNNN.parquet`` (one row per attempted sample, failed
downloads included) and ``NNNNN_stats.json`` (counts, timings and a ``status_dict``).
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.io.shards import add_tar_member

_MTIME = 1_700_000_000  # fixed tar member mtime and stats start time, for reproducible output


@dataclass
class ShardSample:
    """One sample as img2dataset records it: tar members, parquet row and json."""

    key: str
    url: str
    caption: str | None
    image: bytes | None  # the ``.jpg`` member; None: no image member
    status: str = "success"
    error_message: str | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    sha256: str | None = None
    uid: str | None = None
    has_txt: bool = True
    in_tar: bool = True



def _sample_meta(sample: ShardSample, with_uid: bool) -> dict[str, Any]:
    """The per-sample record, in img2dataset's column order (url, caption, extras, key, ...)."""
    meta: dict[str, Any] = {"url": sample.url, "caption": sample.caption}
    if with_uid:
        meta["uid"] = sample.uid
    meta.update(
        key=sample.key,
        status=sample.status,
        error_message=sample.error_message,
        width=sample.width,
        height=sample.height,
        original_width=sample.original_width,
        original_height=sample.original_height,
        exif=None,
        sha256=sample.sha256,
    )
    return meta


def _parquet_schema(with_uid: bool) -> pa.Schema:
    fields = [pa.field("url", pa.string()), pa.field("caption", pa.string())]
    if with_uid:
        fields.append(pa.field("uid", pa.string()))
    fields += [
        pa.field("key", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("width", pa.int64()),
        pa.field("height", pa.int64()),
        pa.field("original_width", pa.int64()),
        pa.field("original_height", pa.int64()),
        pa.field("exif", pa.string()),
        pa.field("sha256", pa.string()),
    ]
    return pa.schema(fields)


def _add_img2dataset_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """A member as img2dataset's writer leaves it (read-only, owner "bigdata")."""
    add_tar_member(tar, name, data, mtime=_MTIME, mode=0o444, owner="bigdata")


def write_img2dataset_shard(
    root: Path, shard: str, samples: list[ShardSample], with_uid: bool = False
) -> None:
    """Write shard ``shard`` (tar, parquet, stats) as img2dataset's webdataset writer does."""
    metas = [_sample_meta(s, with_uid) for s in samples]

    with tarfile.open(root / f"{shard}.tar", "w") as tar:
        for sample, meta in zip(samples, metas, strict=True):
            if not sample.in_tar:
                continue
            if sample.image is not None:
                _add_img2dataset_member(tar, f"{sample.key}.jpg", sample.image)
            _add_img2dataset_member(
                tar, f"{sample.key}.json", json.dumps(meta, indent=4).encode("utf-8")
            )
            if sample.has_txt and sample.caption is not None:
                _add_img2dataset_member(tar, f"{sample.key}.txt", sample.caption.encode("utf-8"))

    schema = _parquet_schema(with_uid)
    columns = {name: [m[name] for m in metas] for name in schema.names}
    pq.write_table(pa.Table.from_pydict(columns, schema=schema), root / f"{shard}.parquet")

    status_dict: dict[str, int] = {}
    for sample in samples:
        label = sample.error_message or sample.status
        status_dict[label] = status_dict.get(label, 0) + 1
    successes = sum(s.status == "success" for s in samples)
    duration = round(0.05 * len(samples), 3)  # plausible and reproducible, not measured
    start_time = float(_MTIME + int(shard))
    stats = {
        "count": len(samples),
        "successes": successes,
        "failed_to_download": sum(s.status == "failed_to_download" for s in samples),
        "failed_to_resize": sum(s.status == "failed_to_resize" for s in samples),
        "duration": duration,
        "start_time": start_time,
        "end_time": start_time + duration,
        "status_dict": status_dict,
    }
    (root / f"{shard}_stats.json").write_text(json.dumps(stats, indent=4) + "\n", encoding="utf-8")
