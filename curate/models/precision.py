"""Numeric settings a model needs on its device."""

from __future__ import annotations

import torch


def use_ieee_fp32(device: torch.device) -> None:
    """fp32 on CUDA means IEEE fp32 (process-wide, as a scoring or teacher process needs).

    cuDNN runs fp32 convolutions in TF32 by default on Ampere and later GPUs: a ViT's patch
    embedding alone put ViT-B-32's scores 2.0e-5 and ViT-L-14's 1.6e-5 off the CPU's on an
    H200 (benchmarks/score_gpu.py); matrix products are IEEE unless someone turned TF32 on.
    """
    if device.type != "cuda":
        return
    if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9: per-backend precision
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
