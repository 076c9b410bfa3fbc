"""Reinforce one hand-off shard: a plain function that any executor (or a test) can call.

Samples are read in order and processed in chunks: K augmentations per image (parameters
drawn from a per-uid generator), S synthetic captions per image (seeded per chunk), and the
teachers' embeddings of views, ground-truth caption and synthetic captions. A sample that
cannot be used (no image, no caption, undecodable image) is dropped and counted; the output
tar holds only complete samples and is renamed into place; the runner records it after.
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from curate.io.image import DEFAULT_MAX_PIXELS, decode_image
from curate.io.shards import TarReadResult, TarSample, add_tar_member, iter_tar_samples
from curate.io.statuses import MISSING_CAPTION, MISSING_IMAGE, SampleError
from curate.io.uids import is_valid_uid
from curate.io.workspace import atomic_path
from curate.reinforce import records as rec
from curate.reinforce.augment import AugmentConfig, augment
from curate.reinforce.captioner import Captioner
from curate.reinforce.teachers import TeacherEnsemble

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]
MEMBER_MTIME = 1_700_000_000  # fixed, as export writes them: equal input gives equal tars


@dataclass(frozen=True)
class ReinforceTask:
    """Everything needed to reinforce one shard; paths are strings so it pickles anywhere."""

    shard_name: str
    tar: str
    out_tar: str
    augmentations: int
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    bf16: bool = False
    batch_size: int = 16
    seed: int = 0
    max_image_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class ReinforceModels:
    """The teachers and the optional captioner a worker holds."""

    ensemble: TeacherEnsemble
    captioner: Captioner | None = None


@dataclass
class _Prepared:
    sample: TarSample
    image: Image.Image
    caption: str
    views: torch.Tensor
    params: list[dict]


def _prepare(sample: TarSample, task: ReinforceTask) -> _Prepared:
    """Decode and augment one sample; SampleError when it cannot be used."""
    if sample.problem is not None:  # an unsafe member, a duplicate key: nothing of it is used
        raise sample.problem
    if "jpg" not in sample.members:  # hand-off shards carry RGB JPEGs, passed through as is
        raise SampleError(MISSING_IMAGE, "no .jpg member")
    caption = sample.caption()
    if caption is None or not caption.strip():
        raise SampleError(MISSING_CAPTION, "no caption (.txt empty or absent)")
    image = decode_image(sample.members["jpg"], task.max_image_pixels).convert("RGB")
    views, params = augment(image, task.augmentations, task.augment, sample.key)
    return _Prepared(sample, image, caption, views, params)


def chunk_seed(seed: int, shard_name: str, chunk: int) -> int:
    """The caption sampling seed of one chunk of a shard."""
    digest = hashlib.sha256(f"{seed}\t{shard_name}\t{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _members(
    item: _Prepared, emb: dict[str, torch.Tensor], syn: list[str] | None, task: ReinforceTask
) -> list[tuple[str, bytes]]:
    uid = item.sample.key
    members = [
        (f"{uid}.{ext}", item.sample.members[ext])
        for ext in rec.PASS_THROUGH
        if ext in item.sample.members
    ]
    members.append((f"{uid}.{rec.PAUG}", rec.encode_json({"param_aug": item.params})))
    if syn is not None:
        members.append((f"{uid}.{rec.SYN}", rec.encode_json({"syn_text": syn})))
    extension = rec.embedding_extension(task.bf16)
    members.append((f"{uid}.{extension}", rec.encode_embeddings(emb, task.bf16)))
    return members


def _process_chunk(
    chunk: list[_Prepared], models: ReinforceModels, task: ReinforceTask, seed: int
) -> list[list[tuple[str, bytes]]]:
    """Embeddings and captions of a chunk of prepared samples -> their tar members."""
    k = task.augmentations
    image_emb = models.ensemble.embed_images(torch.cat([item.views for item in chunk]))
    syn: list[list[str]] | None = None
    texts = [item.caption for item in chunk]
    if models.captioner is not None:
        syn = models.captioner.caption([item.image for item in chunk], seed)
        texts += [caption for captions in syn for caption in captions]
    text_emb = models.ensemble.embed_texts(texts)
    n, s = len(chunk), (len(syn[0]) if syn else 0)
    out = []
    for i, item in enumerate(chunk):
        emb = {"image_emb": image_emb[i * k : (i + 1) * k], "text_emb": text_emb[i : i + 1]}
        if syn is not None:
            emb["syn_text_emb"] = text_emb[n + i * s : n + (i + 1) * s]
        out.append(_members(item, emb, syn[i] if syn is not None else None, task))
    return out


def reinforce_shard(
    task: ReinforceTask, models: ReinforceModels, progress: ProgressFn | None = None
) -> rec.ReinforceStats:
    """Reinforce every sample of one shard, write its output tar; return its stats."""
    started = time.perf_counter()
    progress = progress or (lambda n: None)
    stats = rec.ReinforceStats(shards=1)
    tar_result = TarReadResult()
    out_tar = Path(task.out_tar)
    with atomic_path(out_tar) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as archive:
        chunk: list[_Prepared] = []
        chunk_index = 0

        def flush() -> None:
            nonlocal chunk_index
            seed = chunk_seed(task.seed, task.shard_name, chunk_index)
            for members in _process_chunk(chunk, models, task, seed):
                for name, data in members:
                    add_tar_member(archive, name, data, mtime=MEMBER_MTIME)
            stats.written += len(chunk)
            progress(len(chunk))
            chunk.clear()
            chunk_index += 1

        for sample in iter_tar_samples(Path(task.tar), tar_result):
            if not is_valid_uid(sample.key):  # it would name the output members
                raise ValueError(f"{task.tar}: member key {sample.key!r} is not a uid (32 "
                                 "lowercase hex characters); hand-off shards name samples by uid")
            stats.samples += 1
            try:
                chunk.append(_prepare(sample, task))
            except SampleError as failure:
                stats.dropped[failure.status] += 1
                logger.info("%s: dropped %s (%s)", task.shard_name, sample.key, failure.reason)
                progress(1)
                continue
            if len(chunk) == task.batch_size:
                flush()
        if chunk:
            flush()
    if tar_result.error:
        stats.failed_shards[task.shard_name] = tar_result.error
        logger.error("shard %s: %s", task.shard_name, tar_result.error)
    stats.seconds = time.perf_counter() - started
    return stats
