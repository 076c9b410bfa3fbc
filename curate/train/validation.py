"""Validation of a CLIP model: recall@1 on held-out pairs and zero-shot top-1 on an eval set."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader

from curate.train.data import PairDataset, PairIndex, collate_pairs
from curate.train.evalset import EvalSet
from curate.train.metrics import class_embeddings, recall_at_1, zero_shot_top1

logger = logging.getLogger(__name__)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and dtype is not None:
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


@torch.no_grad()
def encode_texts(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    texts: list[str],
    device: torch.device,
    batch_size: int = 256,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Unit-norm text embeddings, float32 on the CPU."""
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start : start + batch_size]).to(device)
        with _autocast(device, dtype):
            out.append(model.encode_text(tokens, normalize=True).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def encode_heldout(
    model: torch.nn.Module,
    holdout: PairIndex,
    preprocess: Callable[[Image.Image], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    device: torch.device,
    batch_size: int,
    workers: int = 0,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image and text embeddings of held-out pairs (undecodable pairs left out)."""
    dataset = PairDataset(holdout, preprocess, tokenizer)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_pairs
    )
    images, texts = [], []
    for pixels, tokens, _ in loader:
        if len(pixels) == 0:
            continue
        with _autocast(device, dtype):
            images.append(model.encode_image(pixels.to(device), normalize=True).float().cpu())
            texts.append(model.encode_text(tokens.to(device), normalize=True).float().cpu())
    return torch.cat(images), torch.cat(texts)


@torch.no_grad()
def zero_shot(
    model: torch.nn.Module,
    eval_set: EvalSet,
    preprocess: Callable[[Image.Image], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    device: torch.device,
    batch_size: int,
    dtype: torch.dtype | None = None,
) -> float:
    """Zero-shot top-1: each class is its templates' mean text embedding."""
    prompts = [t.replace("{}", c) for c in eval_set.classnames for t in eval_set.templates]
    text = encode_texts(model, tokenizer, prompts, device, dtype=dtype)
    classes = class_embeddings(text, len(eval_set.classnames), len(eval_set.templates))
    features = []
    for start in range(0, len(eval_set), batch_size):
        batch = []
        for path in eval_set.images[start : start + batch_size]:
            with Image.open(path) as image:
                batch.append(preprocess(image.convert("RGB")))
        with _autocast(device, dtype):
            features.append(
                model.encode_image(torch.stack(batch).to(device), normalize=True).float().cpu()
            )
    return zero_shot_top1(torch.cat(features), classes, torch.tensor(eval_set.labels))


def validate(
    model: torch.nn.Module,
    preprocess: Callable[[Image.Image], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    device: torch.device,
    holdout: PairIndex | None,
    eval_set: EvalSet | None,
    batch_size: int,
    workers: int = 0,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Every metric that applies: recall@1 both ways on held-out pairs, zero-shot top-1."""
    was_training = model.training
    model.eval()
    metrics: dict[str, Any] = {}
    try:
        if holdout is not None and len(holdout) > 0:
            image, text = encode_heldout(
                model, holdout, preprocess, tokenizer, device, batch_size, workers, dtype
            )
            metrics.update(recall_at_1(image, text))
            metrics["heldout_pairs"] = int(image.shape[0])
            metrics["recall_chance"] = 1.0 / image.shape[0]
        if eval_set is not None:
            metrics["zero_shot_top1"] = zero_shot(
                model, eval_set, preprocess, tokenizer, device, batch_size, dtype
            )
            metrics["zero_shot_chance"] = 1.0 / len(eval_set.classnames)
            metrics["eval_set"] = eval_set.name
    finally:
        model.train(was_training)
    return metrics
