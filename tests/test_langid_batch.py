"""Batched language ID gives py3langid's own labels, caption by caption; its model cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

from curate.filters.langid_batch import BatchLanguageIdentifier, model_arrays

SENTENCES = [
    "A small dog plays in the snow in front of the house",
    "Ein kleiner Hund spielt im Schnee vor dem Haus",
    "Un petit chien joue dans la neige devant la maison",
    "Un perro pequeño juega en la nieve frente a la casa",
    "Un cane piccolo gioca nella neve davanti alla casa",
    "Um cachorro pequeno brinca na neve em frente à casa",
    "Een kleine hond speelt in de sneeuw voor het huis",
    "Маленькая собака играет в снегу перед домом",
    "小さな犬が家の前の雪の中で遊んでいます",
    "一只小狗在房子前面的雪地里玩耍",
    "작은 개가 집 앞 눈 속에서 놀고 있습니다",
    "كلب صغير يلعب في الثلج أمام المنزل",
    "कुत्ता घर के सामने बर्फ में खेल रहा है",
    "Küçük bir köpek evin önünde karda oynuyor",
    "Mały pies bawi się w śniegu przed domem",
    "Ένας μικρός σκύλος παίζει στο χιόνι",
    "ΜΙΚΡΟΣ ΣΚΥΛΟΣ",
    "FRESH VEGETABLES AT THE VILLAGE MARKET",
    "IMG_2041.JPG",
    "stock photo 12345 - vector illustration",
]
EDGE_CASES = ["", " ", "\n\t", "a", "12345", "🙂🙂🙂", "\ud800 lone surrogate", "x" * 3000,
              "Straße ÄÖÜ ß", "ǅ titlecase ǈ", "e\u0301 combining accent", "mixed Русский English"]


@pytest.fixture(scope="module")
def identifiers() -> tuple[LanguageIdentifier, BatchLanguageIdentifier]:
    reference = LanguageIdentifier.from_model_file(MODEL_FILE)
    return reference, BatchLanguageIdentifier.from_py3langid(reference)


def _generated_captions(n: int, seed: int) -> list[str]:
    """Captions cut and spliced from the sentences, in random case, with random characters."""
    rng = np.random.default_rng(seed)
    words = " ".join(SENTENCES).split()
    alphabet = [chr(c) for c in (*range(32, 127), *range(0xC0, 0x250), *range(0x400, 0x450),
                                 *range(0x3040, 0x30A0), *range(0x4E00, 0x4E80))]
    captions = []
    for _ in range(n):
        kind = rng.integers(4)
        if kind == 0:
            text = " ".join(rng.choice(words, size=rng.integers(1, 25)))
        elif kind == 1:
            text = "".join(rng.choice(alphabet, size=rng.integers(0, 80)))
        elif kind == 2:
            text = str(rng.choice(SENTENCES))[: rng.integers(1, 60)]
        else:
            text = " ".join(rng.choice(words, size=rng.integers(1, 8))).upper()
        captions.append(text)
    return captions


def test_same_labels_as_py3langid(
    identifiers: tuple[LanguageIdentifier, BatchLanguageIdentifier],
) -> None:
    reference, batched = identifiers
    captions = SENTENCES + EDGE_CASES + _generated_captions(3000, seed=0)
    expected = [reference.classify(t)[0] for t in captions]
    assert batched.classify(captions) == expected
    assert len(set(expected)) > 10  # the corpus reaches many languages, not only English


def test_one_caption_or_none(
    identifiers: tuple[LanguageIdentifier, BatchLanguageIdentifier],
) -> None:
    reference, batched = identifiers
    assert batched.classify([]) == []
    assert batched.scores([]).shape == (0, len(batched.labels))
    for text in ("", "Der Hund ist braun", "x" * 3000):
        assert batched.classify([text]) == [reference.classify(text)[0]]


def test_scores_match_py3langid(
    identifiers: tuple[LanguageIdentifier, BatchLanguageIdentifier],
) -> None:
    """The raw naive Bayes scores, not only their argmax, agree to float32 rounding."""
    reference, batched = identifiers
    captions = SENTENCES + EDGE_CASES
    scores = batched.scores(captions)
    for text, row in zip(captions, scores, strict=True):
        expected = reference._decide(text)
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-2)


def test_model_arrays_cached_and_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    identifiers: tuple[LanguageIdentifier, BatchLanguageIdentifier],
) -> None:
    """The packaged model is decompressed once into the cache; a damaged cache is rebuilt."""
    reference, _ = identifiers
    monkeypatch.setenv("FILTER_POOL_CACHE", str(tmp_path / "cache"))
    packaged = Path(MODEL_DIR) / MODEL_FILE
    first = model_arrays(packaged)
    assert first is not None
    (cached,) = (tmp_path / "cache").glob("py3langid-*.npz")
    captions = SENTENCES + EDGE_CASES
    expected = [reference.classify(t)[0] for t in captions]
    assert BatchLanguageIdentifier.from_arrays(first).classify(captions) == expected
    cached.write_bytes(cached.read_bytes()[:1000])  # a truncated cache file
    again = model_arrays(packaged)
    assert again is not None and cached.stat().st_size > 1000
    assert BatchLanguageIdentifier.from_arrays(again).classify(captions) == expected


def test_model_arrays_of_another_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILTER_POOL_CACHE", str(tmp_path / "cache"))
    other = tmp_path / "model.npz.xz"
    other.write_bytes(b"not lzma")
    assert model_arrays(other) is None
