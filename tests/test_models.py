"""Model specs: open_clip vocabulary, local checkpoints, directories, hf-hub, QuickGELU."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import open_clip
import pytest
import torch

from curate.models import ModelError, ModelSpec, load_model, parse_model_spec
from curate.models.directory import save_model_directory
from curate.models.spec import resolve_model_spec

TINY = "fp-tiny-vit"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_parse_model_spec_forms(tmp_path: Path) -> None:
    assert parse_model_spec("ViT-B-32:openai") == ModelSpec("ViT-B-32", "openai")
    assert parse_model_spec("ViT-S-32:/ck/a.pt") == ModelSpec("ViT-S-32", "/ck/a.pt")
    assert parse_model_spec("hf-hub:apple/DFN2B-CLIP-ViT-L-14").pretrained is None
    assert parse_model_spec(str(tmp_path)) == ModelSpec(str(tmp_path))
    assert parse_model_spec(TINY) == ModelSpec(TINY)


def test_local_checkpoint_loads_exactly(tiny_checkpoint: Path) -> None:
    loaded = load_model(ModelSpec(TINY, pretrained=str(tiny_checkpoint)))
    state = torch.load(tiny_checkpoint, weights_only=True)
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in state.items())
    assert loaded.weights == str(tiny_checkpoint)
    assert not loaded.model.training


def test_open_clip_training_checkpoint_format_loads(tmp_path: Path, tiny_checkpoint: Path) -> None:
    state = torch.load(tiny_checkpoint, weights_only=True)
    prefixed = {f"module.{k}": v for k, v in state.items()}
    wrapped = {"epoch": 3, "name": "run", "state_dict": prefixed}
    path = tmp_path / "epoch_3.pt"
    torch.save(wrapped, path)
    loaded = load_model(ModelSpec(TINY, pretrained=str(path)))
    assert torch.equal(loaded.model.state_dict()["logit_scale"], state["logit_scale"])


def test_model_without_weights_is_refused() -> None:
    with pytest.raises(ModelError, match="has no weights.*--random-init"):
        load_model(ModelSpec(TINY))
    assert load_model(ModelSpec(TINY, random_init=True)).weights == "random"


def test_unknown_model_names_close_matches() -> None:
    with pytest.raises(ModelError, match="unknown model 'ViT-B-33'.*ViT-B-32"):
        resolve_model_spec(ModelSpec("ViT-B-33", pretrained="openai"))


def test_missing_checkpoint_and_unknown_tag(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="neither a file nor a tag of ViT-B-32"):
        resolve_model_spec(ModelSpec("ViT-B-32", pretrained=str(tmp_path / "missing.pt")))


def test_checkpoint_of_another_architecture_is_refused(tiny_checkpoint: Path) -> None:
    with pytest.raises(ModelError, match="does not match fp-tiny-rn"):
        load_model(ModelSpec("fp-tiny-rn", pretrained=str(tiny_checkpoint)))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": object()}}, path)
    with pytest.raises(ModelError, match="cannot load checkpoint"):
        load_model(ModelSpec(TINY, pretrained=str(path)))


def test_quick_gelu_is_pinned_from_the_pretrained_record() -> None:
    assert resolve_model_spec(ModelSpec("ViT-L-14", pretrained="dfn2b")).quick_gelu is True
    assert resolve_model_spec(ModelSpec("ViT-H-14", pretrained="dfn5b")).quick_gelu is True
    assert resolve_model_spec(ModelSpec("ViT-B-32", pretrained="openai")).quick_gelu is True
    laion = ModelSpec("ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert resolve_model_spec(laion).quick_gelu is False
    hub = ModelSpec("hf-hub:apple/DFN2B-CLIP-ViT-L-14")
    assert resolve_model_spec(hub).quick_gelu is True


def test_quick_gelu_reaches_the_built_model(tiny_checkpoint: Path) -> None:
    plain = load_model(ModelSpec(TINY, pretrained=str(tiny_checkpoint)))
    quick = load_model(ModelSpec(TINY, pretrained=str(tiny_checkpoint), quick_gelu=True))
    act = type(quick.model.transformer.resblocks[0].mlp.gelu).__name__
    assert act == "QuickGELU"
    assert type(plain.model.transformer.resblocks[0].mlp.gelu).__name__ == "GELU"


def _model_dir(tmp_path: Path, checkpoint: Path, quick_gelu: bool) -> Path:
    model = load_model(ModelSpec(TINY, pretrained=str(checkpoint))).model
    cfg = open_clip.get_model_config(TINY)
    cfg["quick_gelu"] = quick_gelu
    return save_model_directory(model, cfg, tmp_path / "model")


def test_model_directory_loads_with_no_other_flags(tmp_path: Path, tiny_checkpoint: Path) -> None:
    directory = _model_dir(tmp_path, tiny_checkpoint, quick_gelu=True)
    loaded = load_model(ModelSpec(str(directory)))
    reference = load_model(ModelSpec(TINY, pretrained=str(tiny_checkpoint)))
    assert loaded.quick_gelu is True
    assert _same_weights(loaded.model, reference.model)
    with pytest.raises(ModelError, match="--pretrained is not used"):
        resolve_model_spec(ModelSpec(str(directory), pretrained="x.pt"))


def test_directory_without_weights_is_refused(tmp_path: Path) -> None:
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}}))
    with pytest.raises(ModelError, match="holds no weights"):
        resolve_model_spec(ModelSpec(str(tmp_path)))


def test_hf_hub_model_loads_from_the_local_cache(
    tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hf-hub path for real, offline: a repository laid out in a local HF cache."""
    source = _model_dir(tmp_path, tiny_checkpoint, quick_gelu=True)
    cache = tmp_path / "hf"
    repo = cache / "models--filter-pool--tiny-dfn"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for item in source.iterdir():
        (snapshot / item.name).write_bytes(item.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loaded = load_model(ModelSpec("hf-hub:filter-pool/tiny-dfn"))
    reference = load_model(ModelSpec(TINY, pretrained=str(tiny_checkpoint)))
    assert loaded.quick_gelu is True
    assert _same_weights(loaded.model, reference.model)


def test_random_coca_decoder_projection_is_initialised() -> None:
    """open_clip leaves a CoCa decoder's text_projection as torch.empty; random init fills it
    (seeded, std width**-0.5), so two loads under one seed are equal and the logits finite."""
    def decoder_projection() -> torch.Tensor:
        torch.manual_seed(5)
        model = load_model(ModelSpec("fp-tiny-coca", random_init=True)).model
        return model.text_decoder.text_projection.detach().clone()

    first, second = decoder_projection(), decoder_projection()
    assert torch.equal(first, second)
    assert torch.isfinite(first).all()
    assert first.std().item() == pytest.approx(64**-0.5, rel=0.1)
