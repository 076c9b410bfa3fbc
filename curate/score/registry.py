"""Scorer kinds: what a scorer reads per shard, and a registry of them by name.

A kind declares what it reads (``reads``: decoded images and captions, raw image bytes, saved
embeddings, or pool columns), what made its scores (``describe``, kept in ``_scorer.json``),
and loads, once per worker, a ``ShardScorer`` that fills a ``ShardRows``: one float32 score,
status and error per pool row. The score stage, the runner and one writer do the rest
(``RUN/scores/<name>/part-NNNNN.parquet``, completion records, resume). A new scorer is one
module in ``curate/score/kinds/`` with ``@register_scorer("name")``, or a class registered
from anywhere before ``score_run``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from curate.errors import UserError

if TYPE_CHECKING:
    from curate.score.stage import ScoreConfig
    from curate.score.task import ShardInput, ShardRows

DECODED = "decoded"  # images and captions from the shard's tar, decoded by the kind
IMAGE_BYTES = "image_bytes"  # raw image bytes from the shard's tar
EMBEDDINGS = "embeddings"  # RUN/embeddings/<name>/part-NNNNN.{image,text}.npy
POOL = "pool"  # the pool part's columns
READS = (DECODED, IMAGE_BYTES, EMBEDDINGS, POOL)
READS_TARS = (DECODED, IMAGE_BYTES)

ProgressFn = Callable[[int], None]


class ShardScorer(Protocol):
    """A loaded scorer: fills one score, status and error per pool row of a shard."""

    def score(self, shard: ShardInput, progress: ProgressFn) -> ShardRows: ...


class ScorerKind(Protocol):
    """A kind of scorer, registered by name."""

    reads: str

    def describe(self, config: ScoreConfig) -> dict[str, Any]:
        """What makes these scores (``_scorer.json``; its ``model`` and ``precision`` tell a
        rerun whether it may resume); raise ``UserError`` on a request that cannot run."""
        ...

    def load(self, config: ScoreConfig, slot: int) -> ShardScorer:
        """The scorer a worker keeps for every shard it runs (called once per process)."""
        ...


_KINDS: dict[str, ScorerKind] = {}
K = TypeVar("K")


def register_scorer(name: str) -> Callable[[type[K]], type[K]]:
    """Class decorator: register a ``ScorerKind`` (built with no arguments) under ``name``."""

    def register(cls: type[K]) -> type[K]:
        kind = cls()
        if getattr(kind, "reads", None) not in READS:
            raise ValueError(f"scorer {name}: reads must be one of {', '.join(READS)}")
        _KINDS[name] = kind  # type: ignore[assignment]
        return cls

    return register


def _import_kinds() -> None:
    """Import the packaged kinds (``curate/score/kinds/*.py``): each registers itself."""
    from curate.score import kinds

    for module in pkgutil.iter_modules(kinds.__path__):
        importlib.import_module(f"{kinds.__name__}.{module.name}")


def list_scorers() -> list[str]:
    """Names of the registered scorer kinds."""
    _import_kinds()
    return sorted(_KINDS)


def get_scorer_kind(name: str) -> ScorerKind:
    """The kind registered under ``name``; a clear error naming the others."""
    if name not in _KINDS:
        _import_kinds()
    if name not in _KINDS:
        raise UserError(f"unknown scorer kind '{name}'; known: {', '.join(list_scorers())}")
    return _KINDS[name]
