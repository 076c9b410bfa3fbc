"""Exact short-text encoding equals open_clip's padded ``encode_text``; inexact towers fall back."""

from __future__ import annotations

import logging
import random

import open_clip
import pytest
import torch

from curate.models import ModelSpec, list_packaged_configs, load_model
from curate.score.text_encoder import (
    ExactShortTextEncoder,
    PaddedTextEncoder,
    make_text_encoder,
)

TINY_VISION = {"image_size": 32, "patch_size": 16, "width": 64, "layers": 1, "head_width": 32}
WORDS = [
    *("red", "blue", "green", "small", "large", "circle", "square", "star", "photo"),
    *("of", "a", "the", "on", "with", "near", "cat", "dog"),
]


def _captions(n: int = 24, seed: int = 0) -> list[str]:
    """Captions of 1 to 60 words: short, web-like and longer than the context."""
    rng = random.Random(seed)
    captions = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(n)]
    return captions + ["x", " ".join(WORDS * 6)]  # one token, and one cut at 77 tokens


def _model_with_text_tower(
    text_cfg: dict, embed_dim: int, quick_gelu: bool = False, **overrides
) -> torch.nn.Module:
    """A CLIP with a real text tower of the given shape and a tiny vision tower."""
    torch.manual_seed(0)
    cfg = {**text_cfg, **overrides}
    custom = any(k in overrides for k in ("embed_cls", "pool_type"))
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    model = cls(embed_dim=embed_dim, vision_cfg=TINY_VISION, text_cfg=cfg, quick_gelu=quick_gelu)
    return model.eval()


def _max_difference(model: torch.nn.Module, encoder, tokens: torch.Tensor) -> float:
    with torch.inference_mode():
        reference = model.encode_text(tokens, normalize=True).float()
        return (reference - encoder(tokens)).abs().max().item()


@pytest.mark.parametrize("config", [c for c in list_packaged_configs() if "coca" not in c])
def test_packaged_configs_encode_exactly(config: str) -> None:
    loaded = load_model(ModelSpec(config, random_init=True))
    encoder = make_text_encoder(loaded.model)
    assert isinstance(encoder, ExactShortTextEncoder)
    assert _max_difference(loaded.model, encoder, loaded.tokenizer(_captions())) <= 1e-5


def test_packaged_coca_keeps_padded_text() -> None:
    """CoCa's text tower appends a CLS token after the padding: it is encoded padded."""
    loaded = load_model(ModelSpec("fp-tiny-coca", random_init=True))
    encoder = make_text_encoder(loaded.model)
    assert isinstance(encoder, PaddedTextEncoder)
    assert _max_difference(loaded.model, encoder, loaded.tokenizer(_captions())) <= 1e-5


@pytest.mark.parametrize("arch", ["ViT-B-32", "ViT-L-14"])
def test_standard_text_towers_encode_exactly(arch: str) -> None:
    cfg = open_clip.get_model_config(arch)
    model = _model_with_text_tower(cfg["text_cfg"], cfg["embed_dim"], cfg.get("quick_gelu", False))
    encoder = make_text_encoder(model)
    assert isinstance(encoder, ExactShortTextEncoder)
    assert encoder.pooled_last_block  # the last block runs at the end-of-text token only
    tokens = open_clip.get_tokenizer(arch)(_captions(seed=1))
    assert _max_difference(model, encoder, tokens) <= 1e-5


def test_lengths_stop_at_the_end_of_text_token() -> None:
    cfg = open_clip.get_model_config("ViT-B-32")
    encoder = make_text_encoder(_model_with_text_tower(cfg["text_cfg"], cfg["embed_dim"]))
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a", "a red circle", " ".join(WORDS * 6)])
    # start-of-text, the words, end-of-text; a caption past the context is cut at 77
    assert encoder.lengths(tokens).tolist() == [3, 5, 77]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"no_causal_mask": True}, "no causal mask"),
        ({"embed_cls": True}, "class token"),
        ({"pool_type": "last"}, "'last'"),
    ],
)
def test_inexact_towers_fall_back_to_padding(
    overrides: dict, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = open_clip.get_model_config("ViT-B-32")
    model = _model_with_text_tower(cfg["text_cfg"], cfg["embed_dim"], **overrides)
    with caplog.at_level(logging.INFO, logger="curate.score.text_encoder"):
        encoder = make_text_encoder(model)
    assert isinstance(encoder, PaddedTextEncoder)
    assert reason in caplog.text and "padded" in caplog.text
    tokens = open_clip.get_tokenizer("ViT-B-32")(_captions(n=4))
    assert _max_difference(model, encoder, tokens) == 0.0
