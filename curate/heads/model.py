"""Head architectures, their file format and loading (never unpickling).

Architectures (each an ``nn.Sequential`` named ``layers``, one output):

* ``linear``: ``Linear(D, 1)``; a bare ``nn.Linear`` state dict (``weight [1, D]``, ``bias``,
  as LAION-AI/aesthetic-predictor's ``sa_0_4_vit_*_linear.pth``) loads as one.
* ``mlp``: ``Linear, ReLU, ..., Linear(h, 1)`` with configurable hidden sizes.
* ``laion_aesthetic``: christophschuhmann/improved-aesthetic-predictor's MLP, D-1024-128-64-16-1
  with Dropout(0.2, 0.2, 0.1) between the first four Linears and no activations at all (they
  are commented out in its ``simple_inference.py``): state-dict keys ``layers.{0,2,4,6,7}``.

Our head file is a safetensors file whose header metadata holds the JSON ``HeadInfo`` under
``filter_pool_head``. A plain state dict (``.pth`` via ``torch.load(weights_only=True)``, or
safetensors without our metadata) is recognised from its keys and shapes. Inputs are each
embedding L2-normalised (``normalise: l2``), image and text concatenated for ``image_text``.
"""

from __future__ import annotations

import json
import pickle
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from curate.errors import UserError
from curate.io.embeddings import normalised
from curate.io.workspace import file_sha256

ARCHITECTURES = ("linear", "mlp", "laion_aesthetic")
INPUTS = ("image", "image_text")
NORMALISATIONS = ("l2", "none")
OUTPUTS = ("identity", "sigmoid")
METADATA_KEY = "filter_pool_head"
FORMAT = "filter-pool-head/1"
LAION_HIDDEN = (1024, 128, 64, 16)
LAION_DROPOUTS = (0.2, 0.2, 0.1)
SCORE_CHUNK_ROWS = 65_536


class HeadError(UserError):
    """A head file that cannot be used: unreadable, pickled objects, unknown layout, mismatch."""


@dataclass(frozen=True)
class HeadInfo:
    """What a head is and what it expects (the JSON metadata of a head file)."""

    architecture: str
    input_dim: int
    hidden: tuple[int, ...] = ()
    input: str = "image"  # image | image_text (image and text concatenated)
    normalise: str = "l2"  # each embedding to unit length before the head
    output: str = "identity"  # sigmoid: a classifier's logit becomes P(positive)
    embeddings: str | None = None  # the embeddings name it was trained on
    label_kind: str | None = None  # classification | regression | aesthetic
    positive: str | None = None  # the positive class of a binary classifier
    report: dict[str, Any] = field(default_factory=dict)
    source: str = "filter-pool"  # or "state_dict" for a recognised plain state dict

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        checks = (("architecture", self.architecture, ARCHITECTURES),
                  ("input", self.input, INPUTS), ("normalise", self.normalise, NORMALISATIONS),
                  ("output", self.output, OUTPUTS))
        for name, value, allowed in checks:
            if value not in allowed:
                raise HeadError(f"head {name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.input_dim < 1 or any(h < 1 for h in self.hidden):
            raise HeadError(f"head sizes must be positive: input {self.input_dim}, hidden "
                            f"{list(self.hidden)}")
        if self.architecture == "linear" and self.hidden:
            raise HeadError("a linear head has no hidden layers")
        if self.architecture == "mlp" and not self.hidden:
            raise HeadError("an mlp head needs at least one hidden layer")
        if self.architecture == "laion_aesthetic" and self.hidden != LAION_HIDDEN:
            raise HeadError(f"the LAION aesthetic layout has hidden sizes {list(LAION_HIDDEN)}")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadInfo:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**known)
        except TypeError as exc:
            raise HeadError(f"head metadata is incomplete ({exc})") from None


class Head(nn.Module):
    """A head: ``layers`` maps [N, input_dim] to [N, 1]; ``forward`` returns [N]."""

    def __init__(self, layers: nn.Sequential) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.layers if isinstance(m, nn.Linear)]


def build_head(info: HeadInfo) -> Head:
    """The untrained module of ``info``'s architecture."""
    sizes = [info.input_dim, *info.hidden, 1]
    modules: list[nn.Module] = []
    for number, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        modules.append(nn.Linear(a, b))
        last = number == len(sizes) - 2
        if info.architecture == "mlp" and not last:
            modules.append(nn.ReLU())
        elif info.architecture == "laion_aesthetic" and number < len(LAION_DROPOUTS):
            modules.append(nn.Dropout(LAION_DROPOUTS[number]))
    return Head(nn.Sequential(*modules))


# --- reading files --------------------------------------------------------------------------

def _is_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as handle:
        start = handle.read(9)
    if len(start) < 9:
        return False
    (length,) = struct.unpack("<Q", start[:8])
    return start[8:9] == b"{" and 0 < length <= path.stat().st_size - 8


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and (safetensors) header metadata of ``path``, never unpickling objects."""
    if not path.is_file():
        raise HeadError(f"{path}: no such head file")
    if _is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                names = list(handle.keys())  # noqa: SIM118 (safe_open is not iterable)
                return {key: handle.get_tensor(key) for key in names}, metadata
        except Exception as exc:  # safetensors raises its own error types
            raise HeadError(f"{path}: unreadable safetensors file ({str(exc).splitlines()[0]})"
                            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise HeadError(
            f"{path}: holds pickled Python objects, not a plain state dict (e.g. a whole "
            "nn.Module saved with torch.save); refused, heads are never unpickled: save "
            "model.state_dict() or safetensors instead") from None
    except Exception as exc:
        raise HeadError(f"{path}: not a torch state dict or safetensors file "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a Lightning checkpoint
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise HeadError(f"{path}: not a state dict of named tensors")
    return state, {}


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _shapes(state: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k} {list(v.shape)}" for k, v in sorted(state.items())[:6]) + (
        ", ..." if len(state) > 6 else "")


def recognise_state_dict(state: dict[str, torch.Tensor], path: Path
                         ) -> tuple[HeadInfo, dict[str, torch.Tensor]]:
    """A plain state dict's architecture from its keys and shapes (linear or LAION layout),
    with the keys renamed to ``Head``'s; a one-line error for anything else."""
    state = _strip_prefix(state)
    keys = set(state)
    if keys == {"weight", "bias"}:
        state = {f"layers.0.{k}": v for k, v in state.items()}
        keys = set(state)
    indices = sorted({int(k.split(".")[1]) for k in keys
                      if k.startswith("layers.") and k.split(".")[1].isdigit()})
    expected = {f"layers.{i}.{p}" for i in indices for p in ("weight", "bias")}
    if keys == expected and indices == [0]:
        weight, bias = state["layers.0.weight"], state["layers.0.bias"]
        if weight.ndim == 2 and weight.shape[0] == 1 and bias.shape == (1,):
            return HeadInfo("linear", int(weight.shape[1]), source="state_dict"), state
    if keys == expected and indices == [0, 2, 4, 6, 7]:
        dim = int(state["layers.0.weight"].shape[-1])
        sizes = [dim, *LAION_HIDDEN, 1]
        if all(tuple(state[f"layers.{i}.weight"].shape) == (sizes[n + 1], sizes[n])
               and tuple(state[f"layers.{i}.bias"].shape) == (sizes[n + 1],)
               for n, i in enumerate(indices)):
            return HeadInfo("laion_aesthetic", dim, LAION_HIDDEN, label_kind="aesthetic",
                            source="state_dict"), state
    raise HeadError(
        f"{path}: unknown head layout ({_shapes(state) or 'no tensors'}); expected a linear "
        "head (weight [1, D], bias [1]), the LAION aesthetic MLP (layers.0/2/4/6/7, "
        "D-1024-128-64-16-1) or a filter-pool head file")


@dataclass(frozen=True)
class LoadedHead:
    """A head ready to score: its module (eval mode, float32, CPU), info and file digest."""

    path: Path
    sha256: str
    info: HeadInfo
    module: Head

    def check_dim(self, dim: int, embeddings: str) -> None:
        """Refuse embeddings of another width than the head's input."""
        parts = 2 if self.info.input == "image_text" else 1
        need = self.info.input_dim // parts
        if dim * parts != self.info.input_dim:
            raise HeadError(
                f"{self.path}: the head takes {self.info.input} input of dimension "
                f"{self.info.input_dim} ({'2 x ' if parts == 2 else ''}{need}), but embeddings "
                f"'{embeddings}' have dimension {dim}")

    @torch.inference_mode()
    def predict(self, features: np.ndarray) -> np.ndarray:
        """Scores (float32) of prepared input rows (see ``head_inputs``)."""
        out = np.empty(len(features), dtype=np.float32)
        for start in range(0, len(features), SCORE_CHUNK_ROWS):
            chunk = torch.from_numpy(np.ascontiguousarray(
                features[start:start + SCORE_CHUNK_ROWS], dtype=np.float32))
            values = self.module(chunk)
            if self.info.output == "sigmoid":
                values = torch.sigmoid(values)
            out[start:start + len(chunk)] = values.numpy()
        return out

    def score(self, image: np.ndarray, text: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """Scores of embedding rows and the mask of usable rows (unusable rows score NaN)."""
        features, usable = head_inputs(image, text, self.info)
        scores = np.full(len(features), np.nan, dtype=np.float32)
        scores[usable] = self.predict(features[usable])
        return scores, usable


def head_inputs(image: np.ndarray, text: np.ndarray | None, info: HeadInfo
                ) -> tuple[np.ndarray, np.ndarray]:
    """The head's input rows from embedding rows (each normalised as ``info`` says, image and
    text concatenated for ``image_text``) and the mask of rows with every embedding usable."""
    parts = [image] if info.input == "image" else [image, text]
    if any(part is None for part in parts):
        raise ValueError("image_text heads need text embeddings")
    prepared, usable = [], np.ones(len(image), dtype=bool)
    for part in parts:
        if info.normalise == "l2":
            values, ok = normalised(part)
        else:
            values = np.asarray(part, dtype=np.float32)
            ok = np.isfinite(values).all(axis=1)
            values = np.where(ok[:, None], values, 0.0).astype(np.float32)
        prepared.append(values)
        usable &= ok
    return (prepared[0] if len(prepared) == 1 else np.concatenate(prepared, axis=1)), usable


def load_head(path: Path | str) -> LoadedHead:
    """A head file (ours, a plain ``.pth`` state dict or safetensors) ready to score."""
    path = Path(path)
    state, metadata = _read_state(path)
    if METADATA_KEY in metadata:
        try:
            info = HeadInfo.from_dict(json.loads(metadata[METADATA_KEY]))
        except json.JSONDecodeError:
            raise HeadError(f"{path}: head metadata is not JSON") from None
    else:
        info, state = recognise_state_dict(state, path)
    module = build_head(info)
    floats = {k: v.to(torch.float32) for k, v in state.items() if v.is_floating_point()}
    if len(floats) != len(state):
        raise HeadError(f"{path}: head weights must be floating point")
    try:
        module.load_state_dict(floats, strict=True)
    except RuntimeError as exc:
        raise HeadError(f"{path}: weights do not fit its {info.architecture} layout "
                        f"({str(exc).splitlines()[-1].strip()})") from None
    module.eval()
    return LoadedHead(path, file_sha256(path), info, module)


def save_head(module: Head, info: HeadInfo, path: Path) -> None:
    """Write ``module`` and ``info`` as our head file (safetensors + JSON metadata) to
    ``path`` itself (callers stage it and rename)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float32).contiguous()
               for k, v in module.state_dict().items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(info.to_dict(),
                                                                      sort_keys=True)})
