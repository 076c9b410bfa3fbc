"""MobileCLIP's distillation loss over reinforced data (DRClipLoss, arXiv 2311.17049).

``total = clip_weight * CLIP + distill_weight * KD``, summed over the ground-truth caption and,
when given, the synthetic caption of each sample. CLIP is open_clip's contrastive loss of the
student. KD is the cross-entropy between the teachers' image-text similarity distribution (the
mean over teachers of the softmax of each teacher's logits at its own logit scale) and the
student's, averaged over both directions (image to text and text to image).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as nnf
from torch import nn

from curate.reinforce.teachers import slices


def _contrastive(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale * image @ text.T
    labels = torch.arange(len(image), device=image.device)
    return (nnf.cross_entropy(logits, labels) + nnf.cross_entropy(logits.T, labels)) / 2


class DistillClipLoss(nn.Module):
    """CLIP loss plus distillation from a teacher ensemble's stored embeddings."""

    def __init__(
        self,
        teacher_dims: Sequence[int],
        teacher_logit_scales: Sequence[float],
        clip_weight: float = 1.0,
        distill_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if len(teacher_dims) != len(teacher_logit_scales):
            raise ValueError(
                f"{len(teacher_dims)} teachers but {len(teacher_logit_scales)} logit scales"
            )
        if clip_weight < 0 or distill_weight < 0:
            raise ValueError("loss weights must not be negative")
        self.slices = slices(list(teacher_dims))
        self.register_buffer(
            "teacher_logit_scales", torch.tensor([float(s) for s in teacher_logit_scales])
        )
        self.clip_weight = float(clip_weight)
        self.distill_weight = float(distill_weight)

    def teacher_probabilities(
        self, teacher_image: torch.Tensor, teacher_text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over teachers of softmax(scale * sim): image->text and text->image, [B, B]."""
        image_to_text = torch.zeros(
            len(teacher_image), len(teacher_text), device=teacher_image.device
        )
        text_to_image = torch.zeros_like(image_to_text.T)
        for cols, scale in zip(self.slices, self.teacher_logit_scales, strict=True):
            logits = scale * teacher_image[:, cols].float() @ teacher_text[:, cols].float().T
            image_to_text += logits.softmax(dim=1)
            text_to_image += logits.T.softmax(dim=1)
        n = len(self.slices)
        return image_to_text / n, text_to_image / n

    def distill(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        scale: torch.Tensor,
        teacher_image: torch.Tensor,
        teacher_text: torch.Tensor,
    ) -> torch.Tensor:
        """KD term for one caption kind: CE(teacher || student), both directions averaged."""
        target_i2t, target_t2i = self.teacher_probabilities(teacher_image, teacher_text)
        logits = scale * image @ text.T
        i2t = -(target_i2t * logits.log_softmax(dim=1)).sum(dim=1).mean()
        t2i = -(target_t2i * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
        return (i2t + t2i) / 2

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        teacher_image: torch.Tensor,
        teacher_text: torch.Tensor,
        syn_text_features: torch.Tensor | None = None,
        teacher_syn_text: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses for one batch; student features are L2-normalised, logit_scale is exp'd.

        ``teacher_image`` is the stored ``image_emb`` row of the augmentation the student saw,
        ``teacher_text``/``teacher_syn_text`` the rows of the captions it saw ([B, sum D]).
        """
        clip = _contrastive(image_features, text_features, logit_scale)
        kd = self.distill(image_features, text_features, logit_scale, teacher_image, teacher_text)
        if syn_text_features is not None:
            if teacher_syn_text is None:
                raise ValueError("synthetic caption features given without teacher embeddings")
            clip = clip + _contrastive(image_features, syn_text_features, logit_scale)
            kd = kd + self.distill(
                image_features, syn_text_features, logit_scale, teacher_image, teacher_syn_text
            )
        total = self.clip_weight * clip + self.distill_weight * kd
        return {"loss": total, "clip_loss": clip, "distill_loss": kd}
