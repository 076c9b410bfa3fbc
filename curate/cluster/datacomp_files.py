"""DataComp's image-based clustering files, read without unpickling.

DataComp (mlfoundations/datacomp 4a8df19, ``baselines/image_based_clustering.py``) saves
centroids with ``torch.save(centroids, path, pickle_protocol=4)`` where ``centroids`` is a
NumPy float32 array ``[K, 768]``: the published ``{small,medium,large,xlarge}_centroids_l14.pt``
are torch zip files whose ``data.pkl`` pickles one ``ndarray``. ``torch.load(weights_only=True)``
refuses protocol 4 (its FRAME opcode) and NumPy globals, so such a file is read here as data:
``pickletools.genops`` parses the opcodes and a small evaluator accepts exactly the shape of a
pickled float array (numpy ``_reconstruct``, ``ndarray``, ``dtype``, ``_codecs.encode`` for
protocol 2 bytes; nothing is imported or called), then ``np.frombuffer`` builds the array.

The ImageNet-1k reference embeddings (``in1k_clip_vit_l14_{0..4}.pt``) are loaded by DataComp
as ``torch.load(f)["image_features"]``: a tensor in a dict, which ``torch.load(...,
weights_only=True)`` reads. ``.npy`` files (centroids ``[K, D]``, references ``[M, D]``, target
centroid ids ``[T]`` integers) are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import UserError

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
_RECONSTRUCT = {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"}
_GLOBALS = _RECONSTRUCT | {"numpy.ndarray", "numpy.dtype", "_codecs.encode"}
_FLOAT_CODES = {"f2", "f4", "f8"}


class _Call(tuple):
    """A REDUCE in the pickle: (callable name, args); BUILD adds its state as a third item."""


class _Mark:
    pass


_MARK = _Mark()


def _pop_mark(stack: list[Any]) -> list[Any]:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1:]
            del stack[i:]
            return items
    raise ValueError("no MARK")


def _evaluate(data: bytes) -> Any:
    """The pickle's value as plain tuples, with REDUCE/BUILD as ``_Call`` records; any opcode
    or global outside a pickled NumPy array raises ValueError."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name in {"PROTO", "FRAME"}:
            continue
        if name in {"GLOBAL", "STACK_GLOBAL"}:
            if name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                arg = f"{module} {attr}"
            qualified = ".".join(str(arg).split(" ", 1))
            if qualified not in _GLOBALS:
                raise ValueError(f"global {qualified} is not part of a NumPy array")
            stack.append(("global", qualified))
        elif name in {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
                      "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BININT", "BININT1",
                      "BININT2", "LONG1", "BINFLOAT"}:
            stack.append(arg)
        elif name in {"NEWTRUE", "NEWFALSE", "NONE"}:
            stack.append({"NEWTRUE": True, "NEWFALSE": False, "NONE": None}[name])
        elif name == "MARK":
            stack.append(_MARK)
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in {"TUPLE1", "TUPLE2", "TUPLE3"}:
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "TUPLE":
            stack.append(tuple(_pop_mark(stack)))
        elif name in {"MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"}:
            memo[len(memo) if name == "MEMOIZE" else int(arg)] = stack[-1]
        elif name in {"BINGET", "LONG_BINGET", "GET"}:
            stack.append(memo[int(arg)])
        elif name == "REDUCE":
            args, fn = stack.pop(), stack.pop()
            if not (isinstance(fn, tuple) and fn[:1] == ("global",)):
                raise ValueError("REDUCE of something that is not a global")
            if fn[1] == "_codecs.encode":  # protocol 2 bytes: encode(text, "latin1")
                if len(args) != 2 or args[1] != "latin1" or not isinstance(args[0], str):
                    raise ValueError("unexpected _codecs.encode call")
                stack.append(args[0].encode("latin1"))
            else:
                stack.append(_Call((fn[1], args)))
        elif name == "BUILD":
            state, target = stack.pop(), stack.pop()
            if not isinstance(target, _Call) or len(target) != 2:
                raise ValueError("BUILD of something that is not a reconstructed object")
            stack.append(_Call((*target, state)))
        elif name == "STOP":
            if len(stack) != 1:
                raise ValueError("stack not empty at STOP")
            return stack[0]
        else:
            raise ValueError(f"opcode {name} is not part of a NumPy array")
    raise ValueError("no STOP")


def _dtype(record: Any) -> np.dtype:
    if not (isinstance(record, _Call) and len(record) == 3 and record[0] == "numpy.dtype"):
        raise ValueError("the array's dtype is not a numpy dtype")
    args, state = record[1], record[2]
    if not args or args[0] not in _FLOAT_CODES or not isinstance(state, tuple) or len(state) < 2:
        raise ValueError(f"dtype {args[:1]} is not a float type")
    order = {"<": "<", ">": ">", "|": "=", "=": "="}.get(state[1])
    if order is None:
        raise ValueError(f"bad byte order {state[1]!r}")
    return np.dtype(order + args[0] if order != "=" else args[0])


def array_from_pickle(data: bytes) -> np.ndarray:
    """The float ndarray a pickle holds, built from its parsed opcodes (never unpickled)."""
    value = _evaluate(data)
    if not (isinstance(value, _Call) and len(value) == 3 and value[0] in _RECONSTRUCT):
        raise ValueError("the pickle does not hold a NumPy array")
    state = value[2]
    if not (isinstance(state, tuple) and len(state) == 5):
        raise ValueError("unexpected ndarray state")
    _, shape, dtype_record, fortran, raw = state
    dtype = _dtype(dtype_record)
    if not (isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise ValueError(f"bad shape {shape!r}")
    if not isinstance(raw, bytes) or len(raw) != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError("array data does not match its shape")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _torch_zip_pickle(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(names) != 1:
            raise ValueError("not a torch.save zip file (no single data.pkl)")
        return archive.read(names[0])


def _magic(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(8)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise UserError(f"{path}: not a plain {what} .npy ({str(exc).splitlines()[0]})") from None


def _torch_tensor_file(path: Path) -> np.ndarray | None:
    """A torch file holding a tensor, or a dict with ``image_features`` (DataComp's ImageNet
    embeddings); None when torch's safe loader refuses it."""
    import pickle

    import torch

    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError):
        return None
    if isinstance(value, dict) and "image_features" in value:
        value = value["image_features"]
    if isinstance(value, torch.Tensor):
        return value.detach().float().numpy()
    return None


def load_matrix(path: Path | str, what: str) -> np.ndarray:
    """A float matrix ``[rows, dim]`` from ``.npy`` or a DataComp ``.pt`` (a pickled NumPy
    array, a tensor, or a dict with ``image_features``), as float32; a one-line UserError
    naming the file and what is wrong otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file {path} does not exist")
    magic = _magic(path)
    if magic.startswith(NPY_MAGIC):
        array = _npy(path, what)
    elif magic.startswith(ZIP_MAGIC):
        try:
            array = array_from_pickle(_torch_zip_pickle(path))
        except (ValueError, KeyError, IndexError, TypeError, zipfile.BadZipFile) as first:
            tensor = _torch_tensor_file(path)
            if tensor is None:
                raise UserError(f"{path}: not a {what} file (a .npy or DataComp .pt holding a "
                                f"float array: {first})") from None
            array = tensor
    else:
        raise UserError(f"{path}: not a {what} file (expected .npy, or a DataComp .pt from "
                        "torch.save)")
    if array.ndim != 2 or array.dtype.kind != "f" or 0 in array.shape:
        raise UserError(f"{path}: {what} must be a non-empty float matrix [rows, dim], got "
                        f"shape {array.shape} {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise UserError(f"{path}: {what} has NaN or infinite values")
    return array


def load_centroids(path: Path | str, dim: int) -> np.ndarray:
    """Centroids ``[K, dim]`` float32 (DataComp's ``*_centroids_l14.pt`` or a ``.npy``)."""
    centroids = load_matrix(path, "centroids")
    if centroids.shape[1] != dim:
        raise UserError(f"{path}: centroids have dimension {centroids.shape[1]}, the embeddings "
                        f"{dim}")
    return centroids


def load_reference(paths: tuple[Path, ...], dim: int) -> np.ndarray:
    """Reference image embeddings from one or more files, concatenated in the order given (as
    DataComp concatenates its five ImageNet parts)."""
    arrays = [load_matrix(path, "reference embeddings") for path in paths]
    for path, array in zip(paths, arrays, strict=True):
        if array.shape[1] != dim:
            raise UserError(f"{path}: reference embeddings have dimension {array.shape[1]}, the "
                            f"embeddings {dim}")
    return np.concatenate(arrays) if len(arrays) > 1 else arrays[0]


def load_targets(path: Path | str, clusters: int) -> np.ndarray:
    """Target centroid ids from a ``.npy`` of integers (or a text file, one id a line), sorted
    and unique as int64; each must be a centroid id below ``clusters``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"target clusters file {path} does not exist")
    if _magic(path).startswith(NPY_MAGIC):
        ids = _npy(path, "target clusters")
    else:
        try:
            ids = np.array([int(line) for line in path.read_text().split()], dtype=np.int64)
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"{path}: target clusters must be a .npy of integers or a text "
                            "file with one centroid id a line") from None
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise UserError(f"{path}: target clusters must be a 1-d integer array, got shape "
                        f"{ids.shape} {ids.dtype}")
    ids = np.unique(ids.astype(np.int64))
    if ids.size and (ids[0] < 0 or ids[-1] >= clusters):
        raise UserError(f"{path}: target cluster ids must be in [0, {clusters}), got "
                        f"{ids[0]}..{ids[-1]}")
    return ids
