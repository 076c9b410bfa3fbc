"""Language ID throughput: py3langid one caption at a time against the batched identifier.

Generates ``--captions`` captions (DataComp-style word salads from the synthetic metadata
generator, plus sentences in a dozen languages spliced at random), then in one run times

* ``py3langid``: ``LanguageIdentifier.classify(text)`` per caption (what the ``language`` filter
  did before, and what the tests compare against);
* ``batched``: ``BatchLanguageIdentifier.classify(texts)`` in batches of ``--batch`` captions;
* model loading: py3langid's own loader (LZMA-compressed npz) and ``model_arrays`` from the
  cache (decompressed once);

and prints captions/s, the speed-up and how many labels differ (0 expected). Usage::

    .venv/bin/python benchmarks/language_id.py [--captions 200000] [--batch 50000] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import _paths  # noqa: F401  (the repository root on sys.path: tests.generators)
import numpy as np

SENTENCES = (
    "A small dog plays in the snow in front of the house",
    "Ein kleiner Hund spielt im Schnee vor dem Haus",
    "Un petit chien joue dans la neige devant la maison",
    "Un perro pequeño juega en la nieve frente a la casa",
    "Un cane piccolo gioca nella neve davanti alla casa",
    "Um cachorro pequeno brinca na neve em frente à casa",
    "Een kleine hond speelt in de sneeuw voor het huis",
    "Маленькая собака играет в снегу перед домом",
    "小さな犬が家の前の雪の中で遊んでいます",
    "كلب صغير يلعب في الثلج أمام المنزل",
    "Küçük bir köpek evin önünde karda oynuyor",
    "Mały pies bawi się w śniegu przed domem",
)


def captions(n: int, seed: int = 0) -> list[str]:
    """Three in four DataComp-style captions, one in four a cut of a sentence above."""
    from tests.generators.datacomp import _captions

    rng = np.random.default_rng(seed)
    out = _captions(rng, n).to_pylist()
    for i in np.flatnonzero(rng.random(n) < 0.25):
        sentence = SENTENCES[rng.integers(len(SENTENCES))]
        out[i] = sentence[: rng.integers(8, len(sentence) + 1)]
    return out


def measure(n: int, batch: int) -> dict[str, Any]:
    """Both identifiers over the same captions; load times; agreement."""
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    from curate.filters.langid_batch import BatchLanguageIdentifier, model_arrays

    texts = captions(n)
    started = time.perf_counter()
    reference = LanguageIdentifier.from_model_file(MODEL_FILE)
    load_py3langid = time.perf_counter() - started
    model_arrays(Path(MODEL_DIR) / MODEL_FILE)  # fill the cache (a no-op when it is full)
    started = time.perf_counter()
    batched = BatchLanguageIdentifier.from_arrays(model_arrays(Path(MODEL_DIR) / MODEL_FILE))
    load_cached = time.perf_counter() - started

    started = time.perf_counter()
    expected = [reference.classify(t)[0] for t in texts]
    one_by_one = time.perf_counter() - started
    started = time.perf_counter()
    labels: list[str] = []
    for start in range(0, n, batch):
        labels += batched.classify(texts[start : start + batch])
    batched_seconds = time.perf_counter() - started
    differ = sum(a != b for a, b in zip(expected, labels, strict=True))
    return {
        "captions": n,
        "batch": batch,
        "languages_seen": len(set(expected)),
        "english_share": expected.count("en") / n,
        "py3langid_seconds": one_by_one,
        "batched_seconds": batched_seconds,
        "py3langid_per_s": n / one_by_one,
        "batched_per_s": n / batched_seconds,
        "speedup": one_by_one / batched_seconds,
        "labels_differing": differ,
        "load_py3langid_seconds": load_py3langid,
        "load_cached_seconds": load_cached,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    figures = measure(args.captions, args.batch)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"language ID over {figures['captions']:,} captions ({figures['languages_seen']} "
          f"languages seen, {figures['english_share']:.0%} English), one core")
    print(f"  py3langid, one caption at a time: {figures['py3langid_seconds']:.2f} s "
          f"({figures['py3langid_per_s']:,.0f} captions/s)")
    print(f"  batched, {figures['batch']:,} per call:     {figures['batched_seconds']:.2f} s "
          f"({figures['batched_per_s']:,.0f} captions/s)")
    print(f"  speed-up: {figures['speedup']:.1f}x; labels differing: "
          f"{figures['labels_differing']}")
    print(f"  model load: py3langid {figures['load_py3langid_seconds']:.2f} s, "
          f"cached arrays {figures['load_cached_seconds']:.2f} s")


if __name__ == "__main__":
    main()
