"""Score throughput: `filter-pool score` end to end against the model alone, in one run.

Builds (or reuses) a synthetic pool of real 512 px JPEGs in img2dataset layout under the work
directory, ingests it, saves one set of random weights for the model, then measures

* model-only: ``encode_image`` + ``encode_text`` + the row-wise dot product on pre-decoded,
  pre-tokenised tensors, in this process, with as many torch threads as one Dask worker gets;
* end-to-end: ``filter-pool score --workers 1`` as a subprocess with the same weights and
  batch size, timed from outside (process wall) and by the command itself (score stage);

and checks that both give the same scores. Usage::

    .venv/bin/python benchmarks/score_throughput.py [--model ViT-S-32] [--samples 2000]
        [--batch-size 64] [--work DIR] [--json]

Progress goes to stderr; the figures go to stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from curate.models import LoadedModel, ModelSpec, load_model
from curate.pool.ingest import IngestConfig, ingest_pool
from curate.pool.shards import TarReadResult, find_shards, iter_tar_samples
from curate.pool.synthetic import write_synthetic_pool
from curate.workspace import RunPaths

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / "benchmarks" / "_work" / "score_throughput"
IMAGE_SIZE = 512
MAX_SAMPLES_PER_SHARD = 500
SCORER_NAME = "bench"
TARGET_RATIO = 0.85


@dataclass(frozen=True)
class Sample:
    """One pool sample as the benchmark reads it from a shard tar."""

    uid: str
    image: bytes
    caption: str


@dataclass
class ModelOnly:
    """The model-only measurement and the scores it produced, by uid."""

    seconds: float
    preprocess_seconds: float
    scores: dict[str, float]


@dataclass
class Figures:
    """Everything the benchmark reports."""

    model: str
    samples: int
    batch_size: int
    threads: int
    preprocess_samples_per_second: float
    model_only_samples_per_second: float
    end_to_end_process_samples_per_second: float
    end_to_end_stage_samples_per_second: float
    shard_tasks_samples_per_second: float
    process_wall_seconds: float
    stage_wall_seconds: float
    shard_tasks_seconds: float
    ratio_process: float
    ratio_stage: float
    ratio_shard_tasks: float
    max_abs_score_diff: float
    load_average_before: float
    target_ratio: float = TARGET_RATIO


def log(message: str) -> None:
    """Progress on stderr, so that stdout holds only the figures."""
    print(message, file=sys.stderr, flush=True)


def prepare_pool(work: Path, samples: int) -> Path:
    """Write the synthetic pool of at least ``samples`` samples, or reuse a complete one."""
    num_shards = math.ceil(samples / MAX_SAMPLES_PER_SHARD)
    per_shard = math.ceil(samples / num_shards)
    pool = work / f"pool-{num_shards}x{per_shard}-{IMAGE_SIZE}px"
    marker = work / f"{pool.name}.complete"
    if marker.is_file():
        log(f"reusing pool {pool}")
        return pool
    if pool.exists():
        shutil.rmtree(pool)
    log(f"writing pool {pool}: {num_shards} shards x {per_shard} samples, {IMAGE_SIZE} px")
    write_synthetic_pool(
        pool,
        num_shards=num_shards,
        samples_per_shard=per_shard,
        image_size=IMAGE_SIZE,
        seed=0,
        plant_bad=False,
    )
    marker.write_text("complete\n")
    return pool


def prepare_run(work: Path, pool: Path) -> Path:
    """Ingest the pool into its run directory (ingest reuses parts already written)."""
    run = work / f"run-{pool.name}"
    summary = ingest_pool(IngestConfig(pool=pool, run=run))
    log(f"run {run}: {summary.samples} samples ({summary.skipped_shards} shards reused)")
    return run


def prepare_weights(work: Path, model: str) -> Path:
    """Save one random initialisation of ``model`` (once) so both sides use the same weights."""
    checkpoint = work / "weights" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', model)}.pt"
    if not checkpoint.is_file():
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        loaded = load_model(ModelSpec(model, random_init=True))
        torch.save(loaded.model.state_dict(), checkpoint)
        log(f"saved random weights of {model} to {checkpoint}")
    return checkpoint


def read_samples(run: Path, pool: Path) -> list[Sample]:
    """Every sample of the pool's tars, with its uid from the run's pool table."""
    paths = RunPaths(run)
    samples = []
    for shard in find_shards(pool):
        table = pq.read_table(paths.pool_part(shard.index), columns=["uid", "key"])
        uid_of_key = dict(
            zip(table.column("key").to_pylist(), table.column("uid").to_pylist(), strict=True)
        )
        result = TarReadResult()
        for tar_sample in iter_tar_samples(shard.tar, result):
            image, caption = tar_sample.image(), tar_sample.caption()
            if image is None or caption is None:
                raise SystemExit(f"{shard.tar}: sample {tar_sample.key} lacks image or caption")
            samples.append(Sample(uid_of_key[tar_sample.key], image[1], caption))
        if result.error:
            raise SystemExit(result.error)
    return samples


def run_model_only(loaded: LoadedModel, samples: list[Sample], batch_size: int) -> ModelOnly:
    """Pre-decode and tokenise everything, then time only the encoders and the dot product."""
    started = time.perf_counter()
    first = loaded.preprocess(Image.open(io.BytesIO(samples[0].image)))
    images = torch.empty((len(samples), *first.shape), dtype=first.dtype)
    images[0] = first
    for index, sample in enumerate(samples[1:], start=1):
        images[index] = loaded.preprocess(Image.open(io.BytesIO(sample.image)))
    tokens = loaded.tokenizer([sample.caption for sample in samples])
    preprocess_seconds = time.perf_counter() - started

    model = loaded.model
    scores = []
    with torch.inference_mode():
        model.encode_image(images[:batch_size], normalize=True)  # warm-up, not timed
        model.encode_text(tokens[:batch_size], normalize=True)
        started = time.perf_counter()
        for start in range(0, len(samples), batch_size):
            image_features = model.encode_image(images[start : start + batch_size], normalize=True)
            text_features = model.encode_text(tokens[start : start + batch_size], normalize=True)
            scores.append((image_features * text_features).sum(dim=-1))
        seconds = time.perf_counter() - started
    values = torch.cat(scores).float().numpy()
    return ModelOnly(
        seconds=seconds,
        preprocess_seconds=preprocess_seconds,
        scores={sample.uid: float(v) for sample, v in zip(samples, values, strict=True)},
    )


def run_cli(run: Path, model: str, checkpoint: Path, batch_size: int) -> tuple[float, dict]:
    """Run ``filter-pool score`` as a subprocess; return its wall time and its JSON summary."""
    command = [
        str(Path(sys.executable).parent / "filter-pool"),
        "score",
        str(run),
        "--model",
        model,
        "--pretrained",
        str(checkpoint),
        "--name",
        SCORER_NAME,
        "--workers",
        "1",
        "--batch-size",
        str(batch_size),
        "--overwrite",
        "--no-progress",
        "--json",
    ]
    log("running: " + " ".join(command))
    started = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        sys.stderr.write(process.stderr)
        raise SystemExit(f"filter-pool score exited with {process.returncode}")
    return wall, json.loads(process.stdout)


def cli_scores(run: Path) -> dict[str, tuple[float, str]]:
    """uid -> (score, status) from the score table the CLI wrote."""
    scores: dict[str, tuple[float, str]] = {}
    column = f"{SCORER_NAME}_score"
    for part in sorted((run / "scores" / SCORER_NAME).glob("part-*.parquet")):
        table = pq.read_table(part, columns=["uid", column, "status"])
        uids = table.column("uid").to_pylist()
        values = table.column(column).to_pylist()
        statuses = table.column("status").to_pylist()
        for uid, score, status in zip(uids, values, statuses, strict=True):
            scores[uid] = (score, status)
    return scores


def max_score_diff(model_only: dict[str, float], cli: dict[str, tuple[float, str]]) -> float:
    """Largest |model-only - CLI| score over the uids; every uid must be scored ok by both."""
    if set(model_only) != set(cli):
        raise SystemExit(f"score tables differ in uids: {len(model_only)} vs {len(cli)}")
    not_ok = [uid for uid, (_, status) in cli.items() if status != "ok"]
    if not_ok:
        raise SystemExit(f"{len(not_ok)} samples not scored ok by the CLI, e.g. {not_ok[0]}")
    ours = np.array([model_only[uid] for uid in cli], dtype=np.float64)
    theirs = np.array([score for score, _ in cli.values()], dtype=np.float64)
    return float(np.abs(ours - theirs).max())


def measure(model: str, samples_wanted: int, batch_size: int, work: Path) -> Figures:
    """Prepare the pool, run both measurements, check the scores; return the figures."""
    load = os.getloadavg()[0]
    if load > 0.5:
        log(f"warning: load average {load:.2f} before starting; other work may skew the figures")
    work.mkdir(parents=True, exist_ok=True)
    pool = prepare_pool(work, samples_wanted)
    run = prepare_run(work, pool)
    checkpoint = prepare_weights(work, model)
    samples = read_samples(run, pool)
    threads = len(os.sched_getaffinity(0))  # what the single Dask worker gets
    torch.set_num_threads(threads)

    loaded = load_model(ModelSpec(model, pretrained=str(checkpoint)))
    log(f"model-only: {len(samples)} samples, batch {batch_size}, {threads} threads")
    alone = run_model_only(loaded, samples, batch_size)
    del loaded

    wall, summary = run_cli(run, model, checkpoint, batch_size)
    n = len(samples)
    if summary["samples"] != n or summary["samples_scored"] != n:
        raise SystemExit(
            f"CLI scored {summary['samples_scored']} of {summary['samples']}, expected {n}"
        )
    if summary["by_status"] != {"ok": n}:
        raise SystemExit(f"CLI statuses: {summary['by_status']}, expected all ok")
    diff = max_score_diff(alone.scores, cli_scores(run))

    model_rate = n / alone.seconds
    process_rate = n / wall
    stage_rate = float(summary["samples_per_second"])
    shard_rate = n / float(summary["seconds"])  # score_shard only: no start-up, no model load
    return Figures(
        model=model,
        samples=n,
        batch_size=batch_size,
        threads=threads,
        preprocess_samples_per_second=n / alone.preprocess_seconds,
        model_only_samples_per_second=model_rate,
        end_to_end_process_samples_per_second=process_rate,
        end_to_end_stage_samples_per_second=stage_rate,
        shard_tasks_samples_per_second=shard_rate,
        process_wall_seconds=wall,
        stage_wall_seconds=float(summary["wall_seconds"]),
        shard_tasks_seconds=float(summary["seconds"]),
        ratio_process=process_rate / model_rate,
        ratio_stage=stage_rate / model_rate,
        ratio_shard_tasks=shard_rate / model_rate,
        max_abs_score_diff=diff,
        load_average_before=load,
    )


def verdict(ratio: float) -> str:
    """Whether a ratio reaches the target."""
    return "meets target" if ratio >= TARGET_RATIO else "below target"


def render(f: Figures) -> str:
    """The figures as a small aligned table."""
    rows = [
        ("model", f.model),
        ("samples", str(f.samples)),
        ("batch size", str(f.batch_size)),
        ("torch threads", str(f.threads)),
        ("decode+preprocess, this process", f"{f.preprocess_samples_per_second:.1f} samples/s"),
        ("model-only", f"{f.model_only_samples_per_second:.1f} samples/s"),
        (
            "end-to-end, process wall",
            f"{f.end_to_end_process_samples_per_second:.1f} samples/s"
            f"  ({f.process_wall_seconds:.1f} s)",
        ),
        (
            "end-to-end, score stage",
            f"{f.end_to_end_stage_samples_per_second:.1f} samples/s"
            f"  ({f.stage_wall_seconds:.1f} s)",
        ),
        (
            "shard tasks only (info)",
            f"{f.shard_tasks_samples_per_second:.1f} samples/s  ({f.shard_tasks_seconds:.1f} s)",
        ),
        ("ratio process / model-only", f"{f.ratio_process:.3f}  ({verdict(f.ratio_process)})"),
        ("ratio stage / model-only", f"{f.ratio_stage:.3f}  ({verdict(f.ratio_stage)})"),
        ("ratio shard tasks / model-only", f"{f.ratio_shard_tasks:.3f}"),
        ("max |score diff|", f"{f.max_abs_score_diff:.3g}"),
        ("load average before (1 min)", f"{f.load_average_before:.2f}"),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    lines.append(f"target: end-to-end >= {TARGET_RATIO} x model-only")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-S-32", help="open_clip architecture name")
    parser.add_argument("--samples", type=int, default=2000, help="pool size (at least)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="pool, run and weights")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Measure and print the figures, as a table or as JSON."""
    args = parse_args(argv)
    figures = measure(args.model, args.samples, args.batch_size, args.work)
    payload: dict[str, Any] = asdict(figures)
    print(json.dumps(payload, indent=2) if args.json else render(figures))


if __name__ == "__main__":
    main()
