"""A torch Dataset over reinforced shards, for training with the distillation loss.

Each item picks one stored augmentation, the ground-truth caption and one synthetic caption
(a choice drawn from (seed, epoch, index), so it changes per epoch and repeats per run),
replays the augmentation from its stored parameters, and returns the image tensor, the
captions' tokens and the teachers' stored embeddings for exactly those choices.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import Dataset

from curate.errors import UserError
from curate.io.shards import split_member_name
from curate.reinforce import records as rec
from curate.reinforce.augment import AugmentConfig, apply_params

CONFIG_FILE = "config.json"


def student_transform(
    image_size: int | None = None,
    mean: tuple[float, ...] = open_clip.OPENAI_DATASET_MEAN,
    std: tuple[float, ...] = open_clip.OPENAI_DATASET_STD,
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL view -> normalised tensor, resized to the student's size when it differs."""
    steps: list[Any] = []
    if image_size is not None:
        steps.append(T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


class ReinforcedDataset(Dataset):
    """Samples of a reinforced directory (``filter-pool reinforce`` output)."""

    def __init__(
        self,
        root: Path,
        tokenizer: Callable[[list[str]], torch.Tensor],
        image_transform: Callable[[Image.Image], torch.Tensor] | None = None,
        seed: int = 0,
        synthetic: bool = True,
    ) -> None:
        self.root = Path(root)
        config_file = self.root / CONFIG_FILE
        if not config_file.is_file():
            raise UserError(f"{self.root} is not a reinforced directory (no {CONFIG_FILE})")
        self.config = json.loads(config_file.read_text())
        self.augment = AugmentConfig.from_dict(self.config["augmentation"])
        self.extension = self.config["embedding_file"]
        # a synthetic caption per item when the data has them and the caller wants them
        self.synthetic = synthetic and self.config.get("captioner") is not None
        self.tokenizer = tokenizer
        self.image_transform = image_transform or student_transform()
        self.seed = seed
        self.epoch = 0
        self.samples = self._index()

    def _index(self) -> list[tuple[Path, str, dict[str, tuple[int, int]]]]:
        """(tar, uid, {extension: (offset, size)}) for every sample, in shard order."""
        samples = []
        for tar in sorted(self.root.glob("*.tar")):
            members: dict[str, dict[str, tuple[int, int]]] = {}
            with tarfile.open(tar, "r:") as archive:
                for info in archive:
                    if info.isfile():
                        key, extension = split_member_name(info.name)
                        members.setdefault(key, {})[extension] = (info.offset_data, info.size)
            samples.extend((tar, key, found) for key, found in members.items())
        if not samples:
            raise UserError(f"{self.root} holds no reinforced samples")
        return samples

    @property
    def teacher_dims(self) -> list[int]:
        """Each teacher's width in the stored rows, in order (for DistillClipLoss)."""
        return [int(d) for d in self.config["embed_dims"]]

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Pick other augmentations and synthetic captions in the next pass."""
        self.epoch = epoch

    def _read(self, index: int) -> tuple[str, dict[str, bytes]]:
        tar, uid, found = self.samples[index]
        data = {}
        with open(tar, "rb") as handle:
            for extension, (offset, size) in found.items():
                handle.seek(offset)
                data[extension] = handle.read(size)
        return uid, data

    def _rng(self, epoch: int, index: int) -> random.Random:
        digest = hashlib.sha256(f"{self.seed}\t{epoch}\t{index}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "little"))

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        """Sample ``index`` as the current epoch picks it, or as ``(epoch, index)`` names it
        (what a resumable batch sampler asks for)."""
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        uid, data = self._read(index)
        params = json.loads(data[rec.PAUG])["param_aug"]
        emb = rec.decode_embeddings(data[self.extension], self.extension)
        rng = self._rng(epoch, index)
        aug = rng.randrange(len(params))
        image = Image.open(io.BytesIO(data["jpg"])).convert("RGB")
        view = apply_params(image, params[aug], self.augment)
        caption = data["txt"].decode("utf-8")
        item = {
            "uid": uid,
            "augmentation": aug,
            "image": self.image_transform(view),
            "text": self.tokenizer([caption])[0],
            "teacher_image": emb["image_emb"][aug],
            "teacher_text": emb["text_emb"][0],
        }
        if self.synthetic:
            syn = json.loads(data[rec.SYN])["syn_text"]
            pick = rng.randrange(len(syn))
            item.update(
                syn_index=pick,
                syn_text=self.tokenizer([syn[pick]])[0],
                teacher_syn_text=emb["syn_text_emb"][pick],
            )
        return item
