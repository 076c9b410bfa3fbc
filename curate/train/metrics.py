"""Validation metrics over embeddings: zero-shot top-1 and image/text recall@1.

Pure functions of tensors, so the proxy-training evaluation and the tests use exactly these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_embeddings(text_features: torch.Tensor, n_classes: int, n_templates: int) -> torch.Tensor:
    """Average each class's template embeddings (rows ordered class-major) and re-normalise.

    ``text_features`` holds ``n_classes * n_templates`` unit rows: class 0 with every template,
    then class 1, ... (the clip_benchmark / open_clip zero-shot classifier).
    """
    grouped = F.normalize(text_features.float(), dim=-1).reshape(n_classes, n_templates, -1)
    return F.normalize(grouped.mean(dim=1), dim=-1)


def zero_shot_top1(
    image_features: torch.Tensor, classes: torch.Tensor, labels: torch.Tensor
) -> float:
    """Fraction of images whose most similar class embedding is their label."""
    logits = F.normalize(image_features.float(), dim=-1) @ classes.float().T
    return float((logits.argmax(dim=-1) == labels).float().mean())


def recall_at_1(image_features: torch.Tensor, text_features: torch.Tensor) -> dict[str, float]:
    """Image-to-text and text-to-image recall@1 over paired rows (row i of each is pair i).

    A query counts as a hit when its own partner is ranked first; ties go to the lower index,
    so identical captions of different images are not all counted as hits.
    """
    similarity = (
        F.normalize(image_features.float(), dim=-1) @ F.normalize(text_features.float(), dim=-1).T
    )
    target = torch.arange(similarity.shape[0])
    return {
        "image_to_text_r1": float((similarity.argmax(dim=1) == target).float().mean()),
        "text_to_image_r1": float((similarity.argmax(dim=0) == target).float().mean()),
    }
