"""Model specs in open_clip's vocabulary, resolved and loaded with the right activation.

A spec names a model the way open_clip users do:

- ``ViT-B-32`` with ``pretrained="openai"`` (a tag) or a local checkpoint file;
- ``hf-hub:apple/DFN2B-CLIP-ViT-L-14`` (weights from the Hugging Face cache or hub);
- a directory holding ``open_clip_config.json`` and weights (a ``train-dfn`` output,
  the same layout as an hf-hub repository);
- such a directory, or a checkpoint given as pretrained, on object storage
  (``s3://bucket/models/dfn1``): each machine that loads it uses its own copy
  (:mod:`curate.io.remote_copy`), and records name the URL and ETag;
- a packaged tiny config (``fp-tiny-vit``, ``fp-tiny-rn``, ``fp-tiny-cnn``, ``fp-small-vit``)
  for tests and demos.

QuickGELU is pinned, never left to open_clip's mismatch warning: it comes from the
pretrained tag's record, the directory or hub config, or the architecture's config,
and can be forced with ``quick_gelu=True/False``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import pickle
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transformer import MultimodalTransformer

from curate.errors import UserError
from curate.io.remote_copy import remote_copy
from curate.io.storage import is_url

logger = logging.getLogger(__name__)

PACKAGED_CONFIG_DIR = Path(__file__).parent / "configs"
HF_HUB_PREFIX = "hf-hub:"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
_registered = False


class ModelError(UserError):
    """A model spec that cannot be resolved or loaded; the message is one line for users."""


def _register_packaged_configs() -> None:
    global _registered
    if not _registered:
        open_clip.add_model_config(PACKAGED_CONFIG_DIR)
        _registered = True


def list_packaged_configs() -> list[str]:
    """Names of the tiny model configs shipped with filter-pool."""
    return sorted(p.stem for p in PACKAGED_CONFIG_DIR.glob("*.json"))


@dataclass(frozen=True)
class ModelCatalog:
    """The packaged tiny configs and open_clip's other architectures with their pretrained
    tags, as ``filter-pool models`` shows them."""

    packaged: list[str]
    architectures: list[str]
    pretrained: dict[str, list[str]]

    def to_dict(self) -> dict[str, Any]:
        return {"packaged": self.packaged, "architectures": self.architectures,
                "pretrained": self.pretrained}

    def text(self) -> str:
        lines = ["packaged: " + ", ".join(self.packaged),
                 "open_clip architectures (pretrained tags):"]
        lines += [f"  {arch}: {', '.join(self.pretrained.get(arch, [])) or '-'}"
                  for arch in self.architectures]
        return "\n".join(lines)


def describe_models() -> ModelCatalog:
    """Every model a spec can name: the packaged configs, open_clip's architectures and tags."""
    _register_packaged_configs()
    packaged = list_packaged_configs()
    tags: dict[str, list[str]] = {}
    for arch, tag in open_clip.list_pretrained():
        tags.setdefault(arch, []).append(tag)
    architectures = [m for m in open_clip.list_models() if m not in packaged]
    return ModelCatalog(packaged, architectures, tags)


@dataclass(frozen=True)
class ModelSpec:
    """Which filter network to load; ``id`` is its canonical string for provenance."""

    model: str
    pretrained: str | None = None
    quick_gelu: bool | None = None
    random_init: bool = False

    def __post_init__(self) -> None:
        if not self.model or not self.model.strip():
            raise ModelError("empty model name")
        if self.random_init and self.pretrained:
            raise ModelError("--random-init and --pretrained exclude each other")

    @property
    def id(self) -> str:
        text = self.model if not self.pretrained else f"{self.model}:{self.pretrained}"
        if self.random_init:
            text += " (random init)"
        if self.quick_gelu is not None:
            text += f" quick_gelu={self.quick_gelu}"
        return text


def parse_model_spec(text: str, *, random_init: bool = False) -> ModelSpec:
    """Parse one SPEC string: ``ARCH``, ``ARCH:TAG``, ``ARCH:/path/ckpt.pt``, ``hf-hub:org/name``,
    ``DIR`` or a URL of a model directory."""
    text = text.strip()
    if text.startswith(HF_HUB_PREFIX) or is_url(text) or Path(text).is_dir() or ":" not in text:
        return ModelSpec(model=text, random_init=random_init)
    arch, pretrained = text.split(":", 1)
    return ModelSpec(model=arch, pretrained=pretrained or None, random_init=random_init)


@dataclass
class LoadedModel:
    """An open_clip model ready for inference, with its eval transform and tokenizer."""

    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    spec: ModelSpec
    quick_gelu: bool
    weights: str
    device: torch.device

    @property
    def embed_dim(self) -> int:
        projection = getattr(self.model, "text_projection", None)
        if isinstance(projection, torch.Tensor):
            return int(projection.shape[-1])
        return int(self.model.encode_text(self.tokenizer(["probe"])).shape[-1])

    def describe(self) -> dict[str, Any]:
        """What was loaded, for run records and score metadata."""
        return {
            "spec": self.spec.id,
            "model": self.spec.model,
            "pretrained": self.spec.pretrained,
            "weights": self.weights,
            "quick_gelu": self.quick_gelu,
            "embed_dim": self.embed_dim,
            "open_clip_version": open_clip.__version__,
        }


@dataclass(frozen=True)
class _Resolved:
    """A spec turned into arguments for open_clip."""

    open_clip_name: str
    tag: str | None
    checkpoint: Path | None
    quick_gelu: bool
    weights: str


def _quick_gelu_of_config(config: dict[str, Any] | None) -> bool:
    return bool((config or {}).get("quick_gelu", False))


def _pick_quick_gelu(spec: ModelSpec, from_source: bool, source: str) -> bool:
    if spec.quick_gelu is None or spec.quick_gelu == from_source:
        return from_source
    logger.warning(
        "quick_gelu=%s forced for %s, whose own record says quick_gelu=%s",
        spec.quick_gelu,
        source,
        from_source,
    )
    return spec.quick_gelu


def _find_weights(directory: Path) -> Path | None:
    files = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    preferred = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    for name in preferred:
        if (directory / name).is_file():
            return directory / name
    return files[0] if files else None


def _resolve_directory(spec: ModelSpec, directory: Path) -> _Resolved:
    config_file = directory / "open_clip_config.json"
    if not config_file.is_file():
        raise ModelError(f"model directory {directory} has no open_clip_config.json")
    try:
        config = json.loads(config_file.read_text())
        model_cfg = config["model_cfg"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise ModelError(f"{config_file}: not an open_clip config ({exc})") from exc
    weights = _find_weights(directory)
    if weights is None and not spec.random_init:
        raise ModelError(f"model directory {directory} holds no weights (*.safetensors, *.pth)")
    quick_gelu = _pick_quick_gelu(spec, _quick_gelu_of_config(model_cfg), str(config_file))
    return _Resolved(
        open_clip_name=f"local-dir:{directory}",
        tag=None,
        checkpoint=None,
        quick_gelu=quick_gelu,
        weights=str(weights) if weights and not spec.random_init else "random",
    )


def _hub_quick_gelu(hub_id: str) -> bool | None:
    """QuickGELU as open_clip's pretrained registry records it for a hub repository."""
    for arch, tag in open_clip.list_pretrained():
        record = open_clip.get_pretrained_cfg(arch, tag)
        if record.get("hf_hub", "").strip("/") == hub_id.strip("/"):
            return bool(record.get("quick_gelu", False))
    return None


def _resolve_hub(spec: ModelSpec) -> _Resolved:
    hub_id = spec.model[len(HF_HUB_PREFIX) :]
    from_registry = _hub_quick_gelu(hub_id)
    if from_registry is None:
        try:
            from_registry = _quick_gelu_of_config(open_clip.get_model_config(spec.model))
        except Exception as exc:  # hub unreachable and not cached
            raise ModelError(f"cannot read the config of {spec.model}: {exc}") from exc
    quick_gelu = _pick_quick_gelu(spec, from_registry, spec.model)
    return _Resolved(spec.model, None, None, quick_gelu, spec.model)


def _unknown_model(name: str) -> ModelError:
    close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ModelError(f"unknown model '{name}'{hint} (`filter-pool models` lists them)")


def _resolve_architecture(spec: ModelSpec) -> _Resolved:
    arch = spec.model
    config = open_clip.get_model_config(arch)
    if config is None:
        raise _unknown_model(arch)
    arch_quick_gelu = _quick_gelu_of_config(config)
    if spec.random_init:
        quick_gelu = _pick_quick_gelu(spec, arch_quick_gelu, arch)
        return _Resolved(arch, None, None, quick_gelu, "random")
    if not spec.pretrained:
        raise ModelError(
            f"model '{arch}' has no weights: pass --pretrained TAG|PATH "
            "(or --random-init to score with random weights on purpose)"
        )
    tag_record = open_clip.get_pretrained_cfg(arch, spec.pretrained)
    if tag_record:
        from_tag = bool(tag_record.get("quick_gelu", False))
        quick_gelu = _pick_quick_gelu(spec, from_tag, f"{arch}:{spec.pretrained}")
        return _Resolved(arch, spec.pretrained, None, quick_gelu, f"{arch}:{spec.pretrained}")
    if is_url(spec.pretrained):
        copy = remote_copy(spec.pretrained, "checkpoint")
        quick_gelu = _pick_quick_gelu(spec, arch_quick_gelu, arch)
        return _Resolved(arch, None, copy.path, quick_gelu, copy.describe(copy.path.name))
    checkpoint = Path(spec.pretrained)
    if not checkpoint.is_file():
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ModelError(
            f"--pretrained '{spec.pretrained}' is neither a file nor a tag of {arch} "
            f"(tags: {', '.join(tags) or 'none'})"
        )
    quick_gelu = _pick_quick_gelu(spec, arch_quick_gelu, arch)
    return _Resolved(arch, None, checkpoint, quick_gelu, str(checkpoint))


def resolve_model_spec(spec: ModelSpec) -> _Resolved:
    """Check a spec without loading weights: names, files, tags and the activation."""
    _register_packaged_configs()
    if spec.model.startswith(HF_HUB_PREFIX):
        if spec.pretrained:
            raise ModelError("--pretrained is not used with hf-hub: models (weights come from it)")
        return _resolve_hub(spec)
    if is_url(spec.model):
        if spec.pretrained:
            raise ModelError("--pretrained is not used with a model directory (it holds weights)")
        copy = remote_copy(spec.model, "model")
        resolved = _resolve_directory(spec, copy.path)
        if resolved.weights == "random":
            return resolved
        return dataclasses.replace(resolved, weights=copy.describe(Path(resolved.weights).name))
    directory = Path(spec.model)
    if directory.is_dir():
        if spec.pretrained:
            raise ModelError("--pretrained is not used with a model directory (it holds weights)")
        return _resolve_directory(spec, directory)
    return _resolve_architecture(spec)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_checkpoint_strict(model: torch.nn.Module, checkpoint: Path, arch: str) -> None:
    try:
        open_clip.load_checkpoint(model, str(checkpoint), strict=True, weights_only=True)
    except (pickle.UnpicklingError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"cannot load checkpoint {checkpoint}: {_first_line(exc)}") from exc
    except (RuntimeError, AssertionError, KeyError, ValueError) as exc:  # keys or shapes differ
        reason = _first_line(exc)
        raise ModelError(f"checkpoint {checkpoint} does not match {arch}: {reason}") from exc


def check_weights(spec: ModelSpec) -> None:
    """Check that a local checkpoint or model directory fits its architecture, cheaply.

    The model is built on the meta device (no memory, no init cost) and the weights are
    loaded into it strictly, so a mismatch is found before any worker starts or any output
    is written. Tags and hub weights are the registry's own and are not checked here.
    """
    resolved = resolve_model_spec(spec)
    if resolved.checkpoint is None and not resolved.open_clip_name.startswith("local-dir:"):
        return
    if spec.random_init:
        return
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        try:
            model = _meta_model(resolved, load_weights=resolved.checkpoint is None)
        except (RuntimeError, AssertionError, OSError, ValueError) as exc:
            raise ModelError(f"cannot load {spec.id}: {_first_line(exc)}") from exc
        if resolved.checkpoint is not None:
            _load_checkpoint_strict(model, resolved.checkpoint, resolved.open_clip_name)


def weight_bytes(spec: ModelSpec) -> int | None:
    """Bytes of the model's parameters, from its architecture built on the meta device (no
    memory, no weights read); None when it cannot be built here."""
    try:
        resolved = resolve_model_spec(spec)
        with torch.device("meta"), warnings.catch_warnings(), _quiet_missing_weights(True):
            warnings.simplefilter("ignore")
            model = _meta_model(resolved, load_weights=False)
    except Exception:  # an unknown name, a hub config not at hand: the caller's default
        return None
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _meta_model(resolved: _Resolved, load_weights: bool) -> torch.nn.Module:
    """open_clip's model for ``resolved`` on the meta device (call under ``torch.device``)."""
    return open_clip.create_model(
        resolved.open_clip_name,
        device="meta",
        load_weights=load_weights,
        pretrained_text=False,
        weights_only=True,
        quick_gelu=resolved.quick_gelu,
    )


class _NoWeightsWarningFilter(logging.Filter):
    """Drops open_clip's 'No pretrained weights loaded' warning, which is wrong here when the
    weights come from our own checkpoint loading or random init was asked for."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _quiet_missing_weights(quiet: bool) -> Iterator[None]:
    root = logging.getLogger()
    quiet_filter = _NoWeightsWarningFilter()
    if quiet:
        root.addFilter(quiet_filter)
    try:
        yield
    finally:
        root.removeFilter(quiet_filter)


def init_multimodal_decoders(model: torch.nn.Module) -> None:
    """Give a CoCa text decoder's output projection its initial weights.

    open_clip (3.3) creates ``MultimodalTransformer.text_projection`` with ``torch.empty`` and
    never runs that class's ``init_parameters``, so a randomly initialised CoCa decodes through
    whatever the allocator returned: zeros on a fresh CPU page, NaN on a GPU machine (seen on
    an H100 host, where every generated caption failed). This sets the normal init that
    ``init_parameters`` meant (std width ** -0.5), drawn from torch's generator like the rest.
    """
    for module in model.modules():
        if isinstance(module, MultimodalTransformer) and module.text_projection is not None:
            torch.nn.init.normal_(module.text_projection, std=module.width**-0.5)


def load_model(spec: ModelSpec, device: str | torch.device = "cpu") -> LoadedModel:
    """Resolve and load a model for inference (eval mode, on ``device``)."""
    resolved = resolve_model_spec(spec)
    device = torch.device(device)
    load_weights = not spec.random_init
    quiet = spec.random_init or resolved.checkpoint is not None
    try:
        with _quiet_missing_weights(quiet):
            model, _, preprocess = open_clip.create_model_and_transforms(
                resolved.open_clip_name,
                pretrained=resolved.tag,
                load_weights=load_weights,
                pretrained_text=load_weights,
                weights_only=True,
                quick_gelu=resolved.quick_gelu,
            )
    except ModelError:
        raise
    except (RuntimeError, AssertionError, OSError) as exc:
        raise ModelError(f"cannot load {spec.id}: {_first_line(exc)}") from exc
    if spec.random_init:
        init_multimodal_decoders(model)
    if resolved.checkpoint is not None:
        _load_checkpoint_strict(model, resolved.checkpoint, resolved.open_clip_name)
    model = model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(resolved.open_clip_name)
    logger.info(
        "loaded %s (weights: %s, quick_gelu=%s) on %s",
        spec.id,
        resolved.weights,
        resolved.quick_gelu,
        device,
    )
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        spec=spec,
        quick_gelu=resolved.quick_gelu,
        weights=resolved.weights,
        device=device,
    )
