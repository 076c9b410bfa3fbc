"""Training on reinforced shards (``filter-pool reinforce`` output) with MobileCLIP's DR loss.

``train_clip`` takes its pairs from here when ``TrainConfig.reinforced`` is set: the held-out
split and validation use the original jpg and caption stored in the shards, the training
batches come from :class:`~curate.reinforce.reader.ReinforcedDataset` (a stored augmentation
replayed, the ground-truth and a synthetic caption, the teachers' embeddings of exactly those)
under the same resumable (epoch, position) batch sampling as plain training, and the step
computes :class:`~curate.reinforce.loss.DistillClipLoss`. The teachers' similarity
distributions are compared with the student's, so the student's embedding width need not match
any teacher's.
"""

from __future__ import annotations

import contextlib
import json
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from curate.errors import UserError
from curate.io.shards import split_member_name
from curate.reinforce import records as rec
from curate.reinforce.loss import DistillClipLoss
from curate.reinforce.reader import CONFIG_FILE, ReinforcedDataset, student_transform
from curate.train.data import EpochBatchSampler, PairIndex, epoch_loader, index_shards
from curate.train.model import TrainableModel

# MobileCLIP's published recipe: --distill-loss-weights 0.25 0.75, --distill-logit-scale 100
DEFAULT_CLIP_WEIGHT = 0.25
DEFAULT_DISTILL_WEIGHT = 0.75
DEFAULT_TEACHER_LOGIT_SCALE = 100.0
BATCH_KEYS = ("text", "teacher_image", "teacher_text", "syn_text", "teacher_syn_text")


@dataclass(frozen=True)
class DistillConfig:
    """Loss weights (``clip_weight * CLIP + distill_weight * KD``), the teachers' logit scales
    (one for all teachers, or one per teacher in their stored order), synthetic captions on/off."""

    clip_weight: float = DEFAULT_CLIP_WEIGHT
    distill_weight: float = DEFAULT_DISTILL_WEIGHT
    teacher_logit_scales: tuple[float, ...] = (DEFAULT_TEACHER_LOGIT_SCALE,)
    synthetic_captions: bool = True

    def __post_init__(self) -> None:
        scales = tuple(float(s) for s in self.teacher_logit_scales)
        object.__setattr__(self, "teacher_logit_scales", scales)
        if self.clip_weight < 0 or self.distill_weight < 0:
            raise UserError("--clip-weight and --distill-weight must be >= 0")
        if self.clip_weight == 0 and self.distill_weight == 0:
            raise UserError("--clip-weight and --distill-weight are both 0: nothing to train on")
        if not scales or any(s <= 0 for s in scales):
            raise UserError(f"--teacher-logit-scale must be positive, got {list(scales)}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "teacher_logit_scales": list(self.teacher_logit_scales)}


def _first_embeddings(root: Path, extension: str) -> dict[str, torch.Tensor] | None:
    """The stored embeddings of the first sample, for the width check."""
    for tar in sorted(root.glob("*.tar")):
        with tarfile.open(tar, "r:") as archive:
            for info in archive:
                if info.isfile() and split_member_name(info.name)[1] == extension:
                    handle = archive.extractfile(info)
                    return rec.decode_embeddings(handle.read() if handle else b"", extension)
    return None


class ReinforcedSource:
    """A checked reinforced directory: its pairs, its training batches and its loss."""

    def __init__(self, root: Path) -> None:
        self.root = root = Path(root)
        if not root.exists():
            raise UserError(f"--reinforced {root} does not exist")
        if not root.is_dir():
            raise UserError(f"--reinforced {root} is not a directory")
        config_file = root / CONFIG_FILE
        if not config_file.is_file():
            raise UserError(
                f"--reinforced {root} is not a reinforced directory (no {CONFIG_FILE}; "
                "make one with `filter-pool reinforce`)"
            )
        try:
            self.config = json.loads(config_file.read_text())
            self.dims = [int(d) for d in self.config["embed_dims"]]
            teacher_dims = [int(t["embed_dim"]) for t in self.config["teachers"]]
            self.extension = str(self.config["embedding_file"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{config_file}: not a reinforce config ({exc!r})") from exc
        if not self.dims or self.dims != teacher_dims or min(self.dims) < 1:
            raise UserError(
                f"{config_file}: the teachers' dims are inconsistent (embed_dims {self.dims}, "
                f"teachers' embed_dim {teacher_dims})"
            )
        first = _first_embeddings(root, self.extension)
        if first is None:
            raise UserError(f"--reinforced {root} holds no reinforced samples")
        width = int(first["image_emb"].shape[-1])
        if width != sum(self.dims):
            raise UserError(
                f"--reinforced {root}: stored teacher embeddings are {width} wide, but the "
                f"teachers' dims {self.dims} in {CONFIG_FILE} add up to {sum(self.dims)}"
            )
        self.has_synthetic = self.config.get("captioner") is not None

    def index(self, progress: bool = False) -> PairIndex:
        """The stored (jpg, caption) pairs, keyed by uid: the held-out split comes from these."""
        index = index_shards(self.root, progress)
        index.source = {**index.source, "kind": "reinforced"}
        return index

    def logit_scales(self, distill: DistillConfig) -> list[float]:
        scales = list(distill.teacher_logit_scales)
        if len(scales) == 1:
            return scales * len(self.dims)
        if len(scales) != len(self.dims):
            raise UserError(
                f"--teacher-logit-scale gives {len(scales)} values for {len(self.dims)} teachers "
                "(give one for all or one per teacher)"
            )
        return scales

    def loss(self, distill: DistillConfig) -> DistillClipLoss:
        return DistillClipLoss(
            self.dims, self.logit_scales(distill), distill.clip_weight, distill.distill_weight
        )

    def describe(self, distill: DistillConfig) -> dict[str, Any]:
        """The run record's account of the reinforced data and the distillation."""
        return {
            "path": str(self.root.resolve()),
            "teachers": [t.get("spec") for t in self.config["teachers"]],
            "teacher_dims": self.dims,
            "augmentations": self.config.get("augmentation", {}).get("num_augmentations"),
            "dtype": self.config.get("dtype"),
            **distill.to_dict(),
            "teacher_logit_scales": self.logit_scales(distill),
            "synthetic_captions": distill.synthetic_captions and self.has_synthetic,
        }

    def dataset(
        self, trainable: TrainableModel, distill: DistillConfig, seed: int
    ) -> ReinforcedDataset:
        """Replayed views resized and normalised as the student expects, its tokens."""
        cfg = trainable.model.visual.preprocess_cfg
        size = cfg.get("size")
        size = size if isinstance(size, int) else tuple(size) if size else None
        aug_size = int(self.config["augmentation"]["image_size"])
        if size in (aug_size, (aug_size, aug_size)):
            size = None
        transform = student_transform(size, tuple(cfg["mean"]), tuple(cfg["std"]))
        return ReinforcedDataset(
            self.root,
            trainable.loaded.tokenizer,
            transform,
            seed=seed,
            synthetic=distill.synthetic_captions,
        )

    def loader(
        self,
        train_index: PairIndex,
        trainable: TrainableModel,
        distill: DistillConfig,
        batch_size: int,
        seed: int,
        workers: int,
        start_micro: int,
        total_micro: int,
    ) -> DataLoader:
        """Batches of the training pairs, sampled exactly as plain training samples them."""
        dataset = self.dataset(trainable, distill, seed)
        where = {uid: i for i, (_, uid, _) in enumerate(dataset.samples)}
        positions = [where[train_index.keys[i]] for i in range(len(train_index))]
        sampler = EpochBatchSampler(len(positions), batch_size, seed, start_micro, total_micro)
        return epoch_loader(_Positions(dataset, positions), sampler, workers, collate_reinforced)


class _Positions(Dataset):
    """(epoch, position in the training pairs) -> that sample of the reinforced dataset."""

    def __init__(self, dataset: ReinforcedDataset, positions: list[int]) -> None:
        self.dataset = dataset
        self.positions = positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        epoch, position = item
        return self.dataset[(epoch, self.positions[position])]


def collate_reinforced(items: list[dict[str, Any]]) -> tuple[torch.Tensor, dict, int]:
    """(images, the other tensors by name, 0 undecodable): the loop's micro-batch shape."""
    images = torch.stack([item["image"] for item in items])
    batch = {k: torch.stack([item[k] for item in items]) for k in BATCH_KEYS if k in items[0]}
    return images, batch, 0


def distill_step(
    model: torch.nn.Module,
    loss_fn: DistillClipLoss,
    micro: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
    device: torch.device,
    dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None,
) -> float:
    """Forward and backward of one optimizer step on one reinforced micro-batch."""
    ((images, batch),) = micro
    images = images.to(device, non_blocking=True)
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    autocast = (
        torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )
    with autocast:
        image = model.encode_image(images, normalize=True)
        tokens = [batch["text"]] + ([batch["syn_text"]] if "syn_text" in batch else [])
        texts = model.encode_text(torch.cat(tokens), normalize=True).split(len(images))
        losses = loss_fn(
            image,
            texts[0],
            model.logit_scale.exp(),
            batch["teacher_image"],
            batch["teacher_text"],
            texts[1] if len(texts) > 1 else None,
            batch.get("teacher_syn_text"),
        )
    loss = losses["loss"]
    (scaler.scale(loss) if scaler is not None else loss).backward()
    return float(loss.detach())
