"""Reinforcement cost: per-sample time of `reinforce` against plain `score` for the same teacher,
and the bytes stored per sample (float32 npz against bf16 pth.gz).

Builds a synthetic pool of real JPEGs (img2dataset layout, which `reinforce` reads like
hand-off shards; the planted bad samples are dropped and counted), saves one set of random
weights for the teacher, then, in this process (``--workers 0`` for both, same threads):

* score: ``score_run`` with that teacher (one image view and one caption per sample);
* reinforce with K = 2 and K = 10 (float32, no captioner) and K = 2 and 10 again with bf16.

Per-sample cost is the sum of the shards' own seconds over the samples written (model
loading excluded for both). Bytes per sample are the embedding member and the paug.json
member; jpg/txt/json are passed through unchanged and not counted. Usage::

    .venv/bin/python benchmarks/reinforce_cost.py [--model fp-small-vit] [--samples 300]
        [--image-size 256] [--ks 2,10] [--captioner] [--work DIR] [--json]

Progress goes to stderr; the figures go to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import _paths  # noqa: F401  (the repository root on sys.path: tests.generators)
import torch

from curate.executor import ExecutorConfig
from curate.ingest.stage import IngestConfig, ingest_pool
from curate.models import ModelSpec, load_model, parse_model_spec
from curate.reinforce import records as rec
from curate.reinforce.captioner import SamplingConfig
from curate.reinforce.stage import ReinforceConfig, reinforce
from curate.score.stage import ScoreConfig, score_run
from tests.generators.synthetic import write_synthetic_pool

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / "benchmarks" / "_work" / "reinforce_cost"
SHARDS = 2


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def member_bytes(out: Path) -> dict[str, int]:
    """Total bytes of each member kind over the output tars."""
    totals: dict[str, int] = {}
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as archive:
            for member in archive.getmembers():
                kind = member.name.partition(".")[2]
                totals[kind] = totals.get(kind, 0) + member.size
    return totals


def save_weights(arch: str, path: Path) -> str:
    torch.manual_seed(0)
    torch.save(load_model(ModelSpec(arch, random_init=True)).model.state_dict(), path)
    return f"{arch}:{path}"


def run_reinforce(
    pool: Path, out: Path, teacher: str, k: int, bf16: bool, captioner: str | None
) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    summary = reinforce(
        ReinforceConfig(
            shards=pool,
            out=out,
            teachers=(parse_model_spec(teacher),),
            augmentations=k,
            captioner=parse_model_spec(captioner) if captioner else None,
            sampling=SamplingConfig(num_captions=5),
            bf16=bf16,
            batch_size=16,
            executor=ExecutorConfig(workers=0),
            progress=False,
        )
    )
    wall = time.perf_counter() - started
    written = summary.stats.written
    sizes = member_bytes(out)
    emb = sizes.get(rec.embedding_extension(bf16), 0)
    return {
        "k": k,
        "dtype": "bfloat16" if bf16 else "float32",
        "captioner": bool(captioner),
        "samples_written": written,
        "dropped": sum(summary.stats.dropped.values()),
        "ms_per_sample": 1000 * summary.stats.seconds / written,
        "wall_seconds": wall,
        "embedding_bytes_per_sample": emb / written,
        "paug_bytes_per_sample": sizes.get(rec.PAUG, 0) / written,
        "syn_bytes_per_sample": sizes.get(rec.SYN, 0) / written,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fp-small-vit")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--ks", default="2,10")
    parser.add_argument("--captioner", action="store_true", help="Also time fp-tiny-coca, S=5.")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work / f"{args.model}-{args.samples}-{args.image_size}"
    pool = work / "pool"
    if not pool.exists():
        log(f"writing a {args.samples}-sample pool of {args.image_size} px JPEGs")
        write_synthetic_pool(
            pool,
            num_shards=SHARDS,
            samples_per_shard=args.samples // SHARDS,
            image_size=args.image_size,
        )
    teacher = save_weights(args.model, work / "teacher.pt")
    captioner = save_weights("fp-tiny-coca", work / "coca.pt") if args.captioner else None
    run = work / "run"
    if run.exists():
        shutil.rmtree(run)
    ingest_pool(IngestConfig(pool=pool, run=run))
    log("score")
    score = score_run(
        ScoreConfig(
            run=run,
            model=parse_model_spec(teacher),
            name="bench",
            executor=ExecutorConfig(workers=0),
            device="cpu",
            progress=False,
        )
    )
    scored = score.stats.ok
    results: dict[str, Any] = {
        "model": args.model,
        "image_size": args.image_size,
        "threads": torch.get_num_threads(),
        "machine": "shared 2-core CPU, other jobs running: figures are contaminated",
        "score": {"samples_scored": scored, "ms_per_sample": 1000 * score.stats.seconds / scored},
        "reinforce": [],
    }
    for k in (int(x) for x in args.ks.split(",")):
        for bf16 in (False, True):
            log(f"reinforce K={k} {'bf16' if bf16 else 'float32'}")
            row = run_reinforce(pool, work / f"out-k{k}-{int(bf16)}", teacher, k, bf16, None)
            row["x_score_cost"] = row["ms_per_sample"] / results["score"]["ms_per_sample"]
            results["reinforce"].append(row)
        if captioner:
            log(f"reinforce K={k} float32 + fp-tiny-coca S=5")
            row = run_reinforce(pool, work / f"out-k{k}-coca", teacher, k, False, captioner)
            row["x_score_cost"] = row["ms_per_sample"] / results["score"]["ms_per_sample"]
            results["reinforce"].append(row)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"teacher {args.model} ({args.image_size} px JPEGs), {results['threads']} threads; "
        f"{results['machine']}"
    )
    print(f"score:     {results['score']['ms_per_sample']:8.2f} ms/sample ({scored} samples)")
    for row in results["reinforce"]:
        extra = " + captions" if row["captioner"] else ""
        print(
            f"reinforce K={row['k']:<2} {row['dtype']:<8}{extra}: "
            f"{row['ms_per_sample']:8.2f} ms/sample ({row['x_score_cost']:.1f}x score), "
            f"embeddings {row['embedding_bytes_per_sample']:.0f} B/sample, "
            f"paug {row['paug_bytes_per_sample']:.0f} B/sample"
        )


if __name__ == "__main__":
    main()
