"""The language filter: py3langid's packaged model by default, or a fastText model as DataComp.

py3langid's model runs a batch of captions at a time (``langid_batch``: the labels of its
``classify``, several times faster).

DataComp's call, kept exactly for ``fasttext_model=PATH`` (lid.176.bin):
``model.predict(text.replace("\\n", " "))[0][0].split("__label__")[1] == lang``. Texts are sent
as one list (fastText's batch predict gives each line the same answer as a single call and
avoids its NumPy 2 incompatibility on single strings).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import UserError
from curate.filters.langid_batch import BatchLanguageIdentifier, model_arrays
from curate.filters.registry import Batch, Param, existing_file, register_filter
from curate.filters.sqltext import strings

logger = logging.getLogger(__name__)

Identify = Callable[[list[str]], list[str]]
FASTTEXT_LABEL = "__label__"
LANGID_BATCH = 50_000  # captions per batched py3langid call (bounds its sparse matrices)


@functools.lru_cache(maxsize=1)
def _py3langid() -> BatchLanguageIdentifier:
    """py3langid's packaged model, from the cache when it was decompressed before."""
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    logger.debug("loading py3langid's packaged model")
    arrays = model_arrays(Path(MODEL_DIR) / MODEL_FILE)
    if arrays is not None:
        return BatchLanguageIdentifier.from_arrays(arrays)
    return BatchLanguageIdentifier.from_py3langid(LanguageIdentifier.from_model_file(MODEL_FILE))


@functools.lru_cache(maxsize=4)
def _fasttext(path: str) -> Any:
    try:
        import fasttext
    except ImportError as exc:
        raise UserError("language: fasttext_model needs the fasttext package "
                        "(pip install fasttext-wheel)") from exc
    fasttext.FastText.eprint = lambda *_: None  # as DataComp: silence load_model's warning
    try:
        return fasttext.load_model(path)
    except ValueError as exc:
        raise UserError(f"language: cannot load fastText model {path}: {exc}") from exc


def _fasttext_identify(model: Any) -> Identify:
    def identify(texts: list[str]) -> list[str]:
        labels, _ = model.predict([t.replace("\n", " ") for t in texts], k=1)
        return [top[0].split(FASTTEXT_LABEL)[1] if top else "" for top in labels]

    return identify


def _langid_identify(model: BatchLanguageIdentifier) -> Identify:
    def identify(texts: list[str]) -> list[str]:
        labels: list[str] = []
        for start in range(0, len(texts), LANGID_BATCH):
            labels += model.classify(texts[start : start + LANGID_BATCH])
        return labels

    return identify


def _resolve(_con: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Load the model once and check that it knows ``lang``."""
    if p["fasttext_model"]:
        model = _fasttext(str(Path(p["fasttext_model"])))
        known = [label.split(FASTTEXT_LABEL)[-1] for label in model.get_labels()]
        identify = _fasttext_identify(model)
    else:
        model = _py3langid()
        known = list(dict.fromkeys(model.labels))
        identify = _langid_identify(model)
    if p["lang"] not in known:
        raise UserError(f"language: the model has no language '{p['lang']}'; it knows "
                        f"{len(known)}: {', '.join(sorted(known)[:30])}...")
    return {**p, "_identify": identify}


@register_filter(
    "language",
    params=[
        Param("lang", str, "en", "keep captions identified as this language (ISO 639-1 code)",
              check=lambda v: None if v.strip() else "must not be empty"),
        Param("fasttext_model", Path, None, "fastText language-ID model (lid.176.bin) used as "
              "DataComp does; default: py3langid's packaged model", check=existing_file),
    ],
    columns=("text",),
    resolve=_resolve,
)
def language(batch: Batch, p: Mapping[str, Any]) -> np.ndarray:
    """Caption's identified language is lang (null text fails); Python only."""
    texts = strings(batch, "text")
    present = [i for i, t in enumerate(texts) if t is not None]
    keep = np.zeros(len(texts), dtype=bool)
    if present:
        labels = p["_identify"]([texts[i] for i in present])
        keep[present] = np.asarray(labels, dtype=object) == p["lang"]
    return keep
