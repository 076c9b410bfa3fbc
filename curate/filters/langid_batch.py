"""py3langid's language model run over a whole batch of captions at once.

py3langid classifies one caption at a time, walking its UTF-8 bytes through a DFA in a Python
loop (about 15-20k captions/s on one core). Here every caption of a batch walks the same DFA
together, one NumPy step per byte position; the feature counts become one sparse matrix and
the naive Bayes scores one sparse-dense product. Same model, same normalisation (an all
upper-case caption is lowered, then NFC), same alias folding, so the same labels as
``LanguageIdentifier.classify``, but for float32 rounding in a near tie (the sums run in
another order).
"""

from __future__ import annotations

import hashlib
import io
import logging
import lzma
import os
import unicodedata
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse

logger = logging.getLogger(__name__)

# py3langid's score for a caption with no feature (every class equal: the first one wins)
NO_FEATURE_SCORE = float(np.finfo(np.float32).min)
# the arrays of py3langid's model file (npz in LZMA, see py3langid.modelio)
MODEL_ARRAYS = ("ptc", "pc", "classes", "nextmove", "nextmove_row", "out_feat")


def cache_dir() -> Path:
    """Where filter-pool keeps derived files: $FILTER_POOL_CACHE, else
    $XDG_CACHE_HOME/filter-pool, else ~/.cache/filter-pool."""
    if os.environ.get("FILTER_POOL_CACHE"):
        return Path(os.environ["FILTER_POOL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "filter-pool"


def _npz_arrays(raw: bytes) -> dict[str, np.ndarray] | None:
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            if not set(MODEL_ARRAYS) <= set(data.files):
                return None
            return {name: data[name] for name in MODEL_ARRAYS}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        return None


def model_arrays(path: Path) -> Mapping[str, np.ndarray] | None:
    """A py3langid model file's arrays, or None if it is not that layout. Its LZMA stream
    takes ~0.5 s to decompress, so the npz inside is kept in the cache, keyed by the file's
    sha256 (a cache that cannot be read is rebuilt, one that cannot be written skipped)."""
    packed = Path(path).read_bytes()
    cached = cache_dir() / f"py3langid-{hashlib.sha256(packed).hexdigest()[:16]}.npz"
    arrays = _npz_arrays(cached.read_bytes()) if cached.is_file() else None
    if arrays is not None:
        return arrays
    try:
        raw = lzma.decompress(packed)
    except lzma.LZMAError:
        return None
    arrays = _npz_arrays(raw)
    if arrays is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
            partial.write_bytes(raw)
            os.replace(partial, cached)
        except OSError as exc:
            logger.debug("language model not cached in %s: %s", cached.parent, exc)
    return arrays


def encode(text: str) -> bytes:
    """py3langid's input: upper-case text lowered, NFC-normalised, UTF-8 (surrogates kept)."""
    if text.isupper():
        text = text.lower()
    return unicodedata.normalize("NFC", text).encode("utf8", errors="surrogatepass")


def _alias_pairs(labels: Sequence[str]) -> list[tuple[int, int]]:
    """(first column, repeated column) for each label that names two classes (srl -> sr)."""
    first: dict[str, int] = {}
    pairs = []
    for i, label in enumerate(labels):
        if label in first:
            pairs.append((first[label], i))
        else:
            first[label] = i
    return pairs


@dataclass(frozen=True)
class BatchLanguageIdentifier:
    """A py3langid model as arrays: the byte DFA and the naive Bayes tables."""

    next_state: np.ndarray  # [rows * 256]: next state by (row of state) * 256 + byte
    row_offset: np.ndarray  # [states]: a state's row * 256
    feature: np.ndarray  # [states]: the feature a state emits, -1 for none
    log_likelihood: np.ndarray  # [features, classes] float32
    log_prior: np.ndarray  # [classes] float32
    labels: tuple[str, ...]  # per class

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> BatchLanguageIdentifier:
        """From a py3langid model file's arrays (``model_arrays``)."""
        return cls(
            next_state=np.asarray(arrays["nextmove"], dtype=np.int32),
            row_offset=np.asarray(arrays["nextmove_row"], dtype=np.int64) << 8,
            feature=np.asarray(arrays["out_feat"], dtype=np.int64),
            log_likelihood=np.asarray(arrays["ptc"], dtype=np.float32),
            log_prior=np.asarray(arrays["pc"], dtype=np.float32),
            labels=tuple(arrays["classes"].tolist()),
        )

    @classmethod
    def from_py3langid(cls, identifier: Any) -> BatchLanguageIdentifier:
        """From a ``py3langid.langid.LanguageIdentifier`` (its public model attributes, which
        are the model file's arrays under other names)."""
        return cls.from_arrays({
            "nextmove": np.asarray(identifier.tk_nextmove),
            "nextmove_row": np.asarray(identifier.tk_row),
            "out_feat": np.asarray(identifier.tk_output),
            "ptc": identifier.nb_ptc,
            "pc": identifier.nb_pc,
            "classes": np.asarray(identifier.nb_classes),
        })

    def _feature_counts(self, encoded: list[bytes]) -> scipy.sparse.csr_matrix:
        """[captions, features] feature counts: all captions step through the DFA together,
        longest first, so the captions still walking are always a prefix."""
        import scipy.sparse  # ~0.1 s: loaded when captions are identified, not at startup

        shape = (len(encoded), len(self.log_likelihood))
        if not encoded:
            return scipy.sparse.csr_matrix(shape, dtype=np.float32)
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        order = np.argsort(-lengths, kind="stable")
        longest_first = lengths[order]
        data = np.frombuffer(b"".join(encoded[i] for i in order), dtype=np.uint8)
        starts = np.cumsum(longest_first) - longest_first
        # walking[j]: how many captions have a byte at position j
        walking = np.searchsorted(-longest_first, -np.arange(int(longest_first[0])), "left")
        state = np.zeros(len(encoded), dtype=np.int64)
        rows, features = [], []
        for position, count in enumerate(walking.tolist()):
            reached = self.next_state[self.row_offset[state[:count]] + data[starts[:count]
                                                                            + position]]
            state[:count] = reached
            emitted = self.feature[reached]
            hit = np.flatnonzero(emitted >= 0)
            if hit.size:
                rows.append(order[hit])
                features.append(emitted[hit])
        if not rows:
            return scipy.sparse.csr_matrix(shape, dtype=np.float32)
        rows, features = np.concatenate(rows), np.concatenate(features)
        counts = scipy.sparse.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, features)), shape=shape
        )
        counts.sum_duplicates()  # per caption, each feature once with its count
        return counts

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """[captions, classes] log-posterior scores as py3langid computes them (not
        normalised), aliased classes folded into their first column."""
        counts = self._feature_counts([encode(t) for t in texts])
        counts.data = np.log1p(counts.data)
        scores = np.asarray(counts @ self.log_likelihood, dtype=np.float32) + self.log_prior
        scores[np.diff(counts.indptr) == 0] = NO_FEATURE_SCORE
        for first, repeated in _alias_pairs(self.labels):
            np.maximum(scores[:, first], scores[:, repeated], out=scores[:, first])
            scores[:, repeated] = NO_FEATURE_SCORE
        return scores

    def classify(self, texts: Sequence[str]) -> list[str]:
        """The most likely language per caption (py3langid's ``classify(text)[0]``)."""
        if not texts:
            return []
        best = self.scores(texts).argmax(axis=1)
        return [self.labels[i] for i in best.tolist()]
