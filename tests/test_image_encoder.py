"""The class-token image encoder equals open_clip's ``encode_image``; other towers fall back."""

from __future__ import annotations

import logging

import open_clip
import pytest
import torch

from curate.models import ModelSpec, list_packaged_configs, load_model
from curate.score.image_encoder import (
    ClassTokenImageEncoder,
    PlainImageEncoder,
    make_image_encoder,
)

TINY_TEXT = {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}


def _model_with_image_tower(vision_cfg: dict, embed_dim: int, **overrides) -> torch.nn.Module:
    """A CLIP with a real image tower of the given shape and a tiny text tower."""
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=embed_dim, vision_cfg={**vision_cfg, **overrides}, text_cfg=TINY_TEXT
    )
    return model.eval()


def _images(size: int, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _max_difference(model: torch.nn.Module, encoder, images: torch.Tensor) -> float:
    with torch.inference_mode():
        reference = model.encode_image(images, normalize=True)
        return (reference - encoder(images)).abs().max().item()


def _image_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, tuple) else size


@pytest.mark.parametrize("config", list_packaged_configs())
def test_packaged_configs_encode_exactly(config: str) -> None:
    """ViT configs take the class-token path; convolutional ones keep encode_image."""
    model = load_model(ModelSpec(config, random_init=True)).model
    encoder = make_image_encoder(model)
    is_vit = isinstance(model.visual, open_clip.transformer.VisionTransformer)
    expected = ClassTokenImageEncoder if is_vit and "coca" not in config else PlainImageEncoder
    assert isinstance(encoder, expected)
    assert _max_difference(model, encoder, _images(_image_size(model))) <= 1e-5


@pytest.mark.parametrize("arch", ["ViT-B-32", "ViT-L-14"])
def test_standard_image_towers_encode_exactly(arch: str) -> None:
    cfg = open_clip.get_model_config(arch)
    model = _model_with_image_tower(cfg["vision_cfg"], cfg["embed_dim"])
    encoder = make_image_encoder(model)
    assert isinstance(encoder, ClassTokenImageEncoder)
    assert _max_difference(model, encoder, _images(224, n=2)) <= 1e-5


@pytest.mark.parametrize(
    "overrides", [{"final_ln_after_pool": True}, {"no_ln_pre": True}, {"ls_init_value": 0.5}]
)
def test_tower_variants_encode_exactly(overrides: dict) -> None:
    vision = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16}
    model = _model_with_image_tower(vision, 32, **overrides)
    encoder = make_image_encoder(model)
    assert isinstance(encoder, ClassTokenImageEncoder)
    assert _max_difference(model, encoder, _images(32)) <= 1e-5


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"pool_type": "avg"}, "'avg'"),
        ({"attentional_pool": True, "attn_pooler_queries": 4}, "attention"),
        ({"qk_norm": True}, "CustomResidualAttentionBlock"),
    ],
)
def test_other_towers_fall_back(
    overrides: dict, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    vision = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16}
    model = _model_with_image_tower(vision, 32, **overrides)
    with caplog.at_level(logging.INFO, logger="curate.score.image_encoder"):
        encoder = make_image_encoder(model)
    assert isinstance(encoder, PlainImageEncoder)
    assert reason in caplog.text
    assert _max_difference(model, encoder, _images(32)) == 0.0


def test_training_mode_falls_back() -> None:
    """Patch dropout is active in training mode: the class-token path is not taken."""
    vision = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16}
    model = _model_with_image_tower(vision, 32).train()
    assert isinstance(make_image_encoder(model), PlainImageEncoder)


def test_plain_encoders_when_asked() -> None:
    model = load_model(ModelSpec("fp-tiny-vit", random_init=True)).model
    assert isinstance(make_image_encoder(model, exact_shortcuts=False), PlainImageEncoder)
