"""Member encodings of a reinforced sample and the per-shard statistics.

Embeddings are stored as ``{uid}.npz`` (float32; a plain zip of ``.npy`` arrays with fixed
timestamps, so equal input gives equal bytes) or ``{uid}.pth.gz`` (bfloat16 tensors saved with
``torch.save`` and gzipped with mtime 0), as DataCompDR does.
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

EMBEDDING_KEYS = ("image_emb", "text_emb", "syn_text_emb")
NPZ = "npz"
PTH_GZ = "pth.gz"
PAUG = "paug.json"
SYN = "syn.json"
PASS_THROUGH = ("jpg", "txt", "json")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def embedding_extension(bf16: bool) -> str:
    return PTH_GZ if bf16 else NPZ


def encode_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``np.load``-readable npz with fixed member timestamps."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def encode_pth_gz(tensors: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in tensors.items()}, buffer)
    return gzip.compress(buffer.getvalue(), mtime=0)


def encode_embeddings(tensors: dict[str, torch.Tensor], bf16: bool) -> bytes:
    """float32 tensors -> the stored member (npz float32, or pth.gz bfloat16)."""
    if bf16:
        return encode_pth_gz({k: v.to(torch.bfloat16) for k, v in tensors.items()})
    return encode_npz({k: v.to(torch.float32).numpy() for k, v in tensors.items()})


def decode_embeddings(data: bytes, extension: str) -> dict[str, torch.Tensor]:
    """Stored member -> float32 tensors by key."""
    if extension == NPZ:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: torch.from_numpy(npz[k].astype(np.float32)) for k in npz.files}
    if extension == PTH_GZ:
        payload = torch.load(io.BytesIO(gzip.decompress(data)), weights_only=True)
        return {k: v.float() for k, v in payload.items()}
    raise ValueError(f"unknown embedding member .{extension}")


def encode_json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


@dataclass
class ReinforceStats:
    """What one shard's reinforcement produced; ``a + b`` merges two."""

    shards: int = 0
    samples: int = 0
    written: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    failed_shards: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def __add__(self, other: ReinforceStats) -> ReinforceStats:
        return ReinforceStats(
            shards=self.shards + other.shards,
            samples=self.samples + other.samples,
            written=self.written + other.written,
            dropped=self.dropped + other.dropped,
            failed_shards={**self.failed_shards, **other.failed_shards},
            seconds=self.seconds + other.seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "shards": self.shards,
            "samples": self.samples,
            "written": self.written,
            "dropped": sum(self.dropped.values()),
            "dropped_by_reason": dict(sorted(self.dropped.items())),
            "failed_shards": self.failed_shards,
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ReinforceStats:
        return cls(
            shards=int(payload["shards"]),
            samples=int(payload["samples"]),
            written=int(payload["written"]),
            dropped=Counter(payload.get("dropped_by_reason", {})),
            failed_shards=dict(payload.get("failed_shards", {})),
            seconds=float(payload.get("seconds", 0.0)),
        )
