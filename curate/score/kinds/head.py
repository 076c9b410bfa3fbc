"""The ``head`` scorer: a learned head (curate.heads) over a run's saved embeddings.

``filter-pool score RUN --kind head --head FILE --embeddings clip_l14 --name aesthetic`` writes
``RUN/scores/aesthetic/`` with ``aesthetic_score`` through the score stage and the runner.
Rows without an embedding keep their pool status (``not_downloaded``) or get
``missing_embedding``. Heads are small and run on the CPU in float32 (about 10k rows/s for the
LAION MLP on one thread). ``_scorer.json`` records the head file's sha256 and metadata, so a rerun
with the same head resumes and another head under the same name is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curate.errors import UserError
from curate.heads.model import LoadedHead, load_head
from curate.io import statuses as st
from curate.io.embeddings import open_embeddings
from curate.io.remote_copy import remote_copy
from curate.io.storage import is_url
from curate.score.registry import EMBEDDINGS, ProgressFn, register_scorer
from curate.score.task import ShardInput, ShardRows

if TYPE_CHECKING:
    from curate.score.stage import ScoreConfig

CHUNK_ROWS = 65_536


def _load(config: ScoreConfig) -> tuple[LoadedHead, str]:
    """The head, and what records call its file: its path, or for a head on object storage
    its URL and ETag (it is loaded from this machine's copy, curate/io/remote_copy.py)."""
    if config.head is None:
        raise UserError("the head scorer needs --head FILE (a filter-pool head, or a linear / "
                        "LAION aesthetic state dict, on disk or at a URL)")
    if is_url(config.head):
        copy = remote_copy(str(config.head), "head")
        return load_head(copy.path), copy.describe(copy.path.name)
    return load_head(config.head), str(Path(config.head).resolve())


def _embeddings_name(config: ScoreConfig, head: LoadedHead) -> str:
    name = config.embeddings or head.info.embeddings
    if name is None:
        raise UserError(f"{head.path} does not say which embeddings it reads: pass "
                        "--embeddings NAME (e.g. clip_l14 for the LAION aesthetic predictor)")
    return name


@dataclass(frozen=True)
class HeadShardScorer:
    """A loaded head scoring one shard's saved embeddings."""

    head: LoadedHead
    embeddings: str

    def score(self, shard: ShardInput, progress: ProgressFn) -> ShardRows:
        rows = shard.rows()
        image = shard.embedding(self.embeddings, "image")
        text = (shard.embedding(self.embeddings, "text")
                if self.head.info.input == "image_text" else None)
        for start in range(0, len(rows), CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, len(rows))
            scores, usable = self.head.score(
                image[start:stop], None if text is None else text[start:stop])
            done = [start + i for i in np.flatnonzero(usable) if rows.status[start + i] is None]
            rows.store(done, scores[np.asarray(done, dtype=np.int64) - start])
            for i in np.flatnonzero(~usable):
                if rows.status[start + i] is None:
                    rows.mark(start + int(i), st.MISSING_EMBEDDING,
                              f"no {self.head.info.input} embedding in '{self.embeddings}'")
            progress(stop - start)
        return rows


@register_scorer("head")
class HeadKind:
    """Scores each row's saved embeddings with ``--head`` (no images are read)."""

    reads = EMBEDDINGS

    def describe(self, config: ScoreConfig) -> dict[str, Any]:
        if config.save_embeddings:
            raise UserError("--save-embeddings is for scorers that compute embeddings; a head "
                            "reads saved ones")
        head, head_file = _load(config)
        name = _embeddings_name(config, head)
        kinds = ["image"] if head.info.input == "image" else ["image", "text"]
        dims = {open_embeddings(config.run, name, kind).dim for kind in kinds}
        for dim in dims:
            head.check_dim(dim, name)
        return {
            "model": f"head sha256:{head.sha256} on {name}",
            "precision": "fp32",
            "head_file": head_file,
            "head_sha256": head.sha256,
            "embeddings": name,
            "head": head.info.to_dict(),
        }

    def load(self, config: ScoreConfig, slot: int) -> HeadShardScorer:
        head, _ = _load(config)
        return HeadShardScorer(head, _embeddings_name(config, head))
