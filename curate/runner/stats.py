"""Per-shard statistics that add together into a run summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

S = TypeVar("S", bound="Stats")


class Stats(Protocol):
    """What the runner needs of a stage's per-shard stats: they add, and round-trip as JSON."""

    shards: int
    samples: int
    failed_shards: dict[str, str]

    def __add__(self: S, other: S) -> S: ...

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls: type[S], payload: dict[str, Any]) -> S: ...


@dataclass
class ShardStats:
    """What one shard's scoring produced; ``a + b`` merges two."""

    shards: int = 0
    samples: int = 0
    seconds: float = 0.0
    by_status: Counter[str] = field(default_factory=Counter)
    failed_shards: dict[str, str] = field(default_factory=dict)
    unlisted_samples: int = 0  # in the tar but not in the pool table

    @property
    def ok(self) -> int:
        return self.by_status.get("ok", 0)

    @property
    def failed(self) -> int:
        return self.samples - self.ok

    def __add__(self, other: ShardStats) -> ShardStats:
        return ShardStats(
            shards=self.shards + other.shards,
            samples=self.samples + other.samples,
            seconds=self.seconds + other.seconds,
            by_status=self.by_status + other.by_status,
            failed_shards={**self.failed_shards, **other.failed_shards},
            unlisted_samples=self.unlisted_samples + other.unlisted_samples,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "shards": self.shards,
            "samples": self.samples,
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "failed": self.failed,
            "by_status": dict(sorted(self.by_status.items())),
            "failed_shards": self.failed_shards,
            "unlisted_samples": self.unlisted_samples,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ShardStats:
        return cls(
            shards=int(payload["shards"]),
            samples=int(payload["samples"]),
            seconds=float(payload["seconds"]),
            by_status=Counter(payload["by_status"]),
            failed_shards=dict(payload.get("failed_shards", {})),
            unlisted_samples=int(payload.get("unlisted_samples", 0)),
        )
