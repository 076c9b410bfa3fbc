"""Score throughput: `filter-pool score` end to end against the plain model, in one run.

Builds (or reuses) a synthetic pool of real 512 px JPEGs in img2dataset layout (captions of
5 to 30 words) under the work directory, ingests it, saves one set of random weights per
model, then measures for each model, with the same batch size and threads:

* plain model: open_clip's ``encode_image`` + ``encode_text`` (captions padded to 77 tokens)
  + the row-wise dot product on pre-decoded, pre-tokenised tensors, in this process;
* our model path (info): the scorer's image encoder and its exact short-text encoder over
  length-sorted caption windows, on the same pre-decoded tensors;
* end-to-end: ``filter-pool score`` as a subprocess with the same weights and its default
  workers (on 2 cores: 2 workers of 1 torch thread; ``--workers N`` to choose), timed from
  outside (process wall) and by the command itself (score stage);

and checks that all three give the same scores (within 1e-4). With ``--lossy`` it also runs
the CLI with reduced precision (bf16 on CPU, fp16 on CUDA) and reports its speed, largest
score difference and Spearman rank correlation against fp32.

With ``--peer`` it also runs clip-retrieval 2.45's ``clip_inference`` (the tool people use
for this today) on the same shards with the same weights, batch size and cores, as a
subprocess timed from outside, and compares its scores (the dot product of the image and text
embeddings it stores, in fp16) with plain open_clip's. clip-retrieval pins numpy<2 and
pyarrow<16, so it is not installed with filter-pool: ``benchmarks/install_peer.sh`` puts it
and the modules it imports into ``benchmarks/_work/peer-site`` (``--peer-site`` elsewhere).

With ``--device cuda`` every path runs on the GPU: the model-only paths take the pre-decoded
tensors batch by batch, the exact CLI run decodes JPEGs on the CPU (``--decode cpu``,
``--precision fp32``), and a second fp32 run decodes them on the GPU (``--decode cuda``),
reported with its speed and its largest difference from the plain model. Usage::

    .venv/bin/python benchmarks/score_throughput.py [--models ViT-S-32,ViT-B-32]
        [--samples 2000] [--batch-size 64] [--workers N] [--device cpu|cuda] [--lossy]
        [--peer] [--work DIR] [--json]

Targets: end-to-end >= 1.5x the plain model (issue 8) and >= 0.85x (issue 2).
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

import _paths  # noqa: F401  (the repository root on sys.path: tests.generators)
import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.shards import TarReadResult, find_shards, iter_tar_samples
from curate.io.workspace import RunPaths
from curate.models import LoadedModel, ModelSpec, load_model
from curate.score.scorer import Scorer
from curate.score.shard import Batch, encode_in_windows
from tests.generators.synthetic import write_synthetic_pool

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / "benchmarks" / "_work" / "score_throughput"
DEFAULT_PEER_SITE = REPO / "benchmarks" / "_work" / "peer-site"
PEER_RUNNER = """
import sys
from clip_retrieval.clip_inference.main import main
if __name__ == "__main__":
    dataset, output, model, batch_size, workers, per_file = sys.argv[1:7]
    main(input_dataset=dataset, output_folder=output, input_format="webdataset",
         batch_size=int(batch_size), num_prepro_workers=int(workers), enable_metadata=True,
         clip_model=model, use_jit=False, wds_number_file_per_input_file=int(per_file))
"""
IMAGE_SIZE = 512
MAX_SAMPLES_PER_SHARD = 500
SCORER_NAME = "bench"
SCORE_TOLERANCE = 1e-4
TARGETS = {"end-to-end >= 0.85 x plain model": 0.85, "end-to-end >= 1.5 x plain model": 1.5}


@dataclass(frozen=True)
class Sample:
    """One pool sample as the benchmark reads it from a shard tar."""

    uid: str
    image: bytes
    caption: str


@dataclass
class Decoded:
    """Every sample pre-decoded and pre-tokenised, as the model-only paths take them."""

    images: torch.Tensor
    tokens: torch.Tensor
    uids: list[str]
    seconds: float


@dataclass
class ModelOnly:
    """One model-only measurement and the scores it produced, by uid."""

    seconds: float
    scores: dict[str, float]


@dataclass
class Figures:
    """Everything the benchmark reports for one model."""

    model: str
    samples: int
    batch_size: int
    threads: int
    cli_workers: str
    device: str
    mean_caption_tokens: float
    preprocess_samples_per_second: float
    plain_model_samples_per_second: float
    our_model_samples_per_second: float
    end_to_end_process_samples_per_second: float
    end_to_end_stage_samples_per_second: float
    process_wall_seconds: float
    stage_wall_seconds: float
    ratio_stage_vs_plain: float
    ratio_process_vs_plain: float
    ratio_stage_vs_our_model: float
    max_abs_diff_ours_vs_plain: float
    max_abs_diff_cli_vs_plain: float
    load_average_before: float
    cuda_decode_stage_samples_per_second: float | None = None
    cuda_decode_max_abs_diff: float | None = None
    lossy_precision: str | None = None
    lossy_stage_samples_per_second: float | None = None
    lossy_max_abs_diff: float | None = None
    lossy_spearman: float | None = None
    peer_process_samples_per_second: float | None = None
    peer_max_abs_diff: float | None = None


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
    uid_of_key = uid_of_keys(run, pool)
    samples = []
    for shard in find_shards(pool):
        result = TarReadResult()
        for tar_sample in iter_tar_samples(shard.tar, result):
            image, caption = tar_sample.image(), tar_sample.caption()
            if image is None or caption is None:
                raise SystemExit(f"{shard.tar}: sample {tar_sample.key} lacks image or caption")
            samples.append(Sample(uid_of_key[tar_sample.key], image[1], caption))
        if result.error:
            raise SystemExit(result.error)
    return samples


def decode_all(loaded: LoadedModel, samples: list[Sample]) -> Decoded:
    """Decode, preprocess and tokenise every sample (timed: the CPU cost of decoding)."""
    started = time.perf_counter()
    first = loaded.preprocess(Image.open(io.BytesIO(samples[0].image)))
    images = torch.empty((len(samples), *first.shape), dtype=first.dtype)
    images[0] = first
    for index, sample in enumerate(samples[1:], start=1):
        images[index] = loaded.preprocess(Image.open(io.BytesIO(sample.image)))
    tokens = loaded.tokenizer([sample.caption for sample in samples])
    seconds = time.perf_counter() - started
    return Decoded(images, tokens, [sample.uid for sample in samples], seconds)


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that a timer reads the work done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_plain_model(loaded: LoadedModel, data: Decoded, batch_size: int) -> ModelOnly:
    """open_clip as people call it: encode_image + encode_text (77 tokens) per batch."""
    model, device = loaded.model, loaded.device
    scores = []
    with torch.inference_mode():
        model.encode_image(data.images[:batch_size].to(device), normalize=True)  # warm-up
        model.encode_text(data.tokens[:batch_size].to(device), normalize=True)
        synchronize(device)
        started = time.perf_counter()
        for start in range(0, len(data.uids), batch_size):
            stop = start + batch_size
            images = data.images[start:stop].to(device)
            image_features = model.encode_image(images, normalize=True)
            text_features = model.encode_text(data.tokens[start:stop].to(device), normalize=True)
            scores.append((image_features * text_features).sum(dim=-1))
        values = torch.cat(scores).float().cpu().numpy()
        seconds = time.perf_counter() - started
    return ModelOnly(seconds, dict(zip(data.uids, values.tolist(), strict=True)))


def run_our_model(loaded: LoadedModel, data: Decoded, batch_size: int) -> ModelOnly:
    """The scorer's encoders as score_shard drives them: images per batch, captions by window."""
    scorer = Scorer(loaded)
    scores = np.empty(len(data.uids), dtype=np.float32)
    scorer.encode_images(data.images[:batch_size])  # warm-up, not timed
    scorer.encode_texts(data.tokens[:batch_size])
    batches = (
        Batch(
            list(range(start, min(start + batch_size, len(data.uids)))),
            data.images[start : start + batch_size],
            data.tokens[start : start + batch_size],
        )
        for start in range(0, len(data.uids), batch_size)
    )
    started = time.perf_counter()
    for rows, encoded in encode_in_windows(scorer, batches, batch_size):
        scores[rows] = encoded.scores
    seconds = time.perf_counter() - started
    return ModelOnly(seconds, dict(zip(data.uids, scores.tolist(), strict=True)))


def run_cli(
    run: Path,
    model: str,
    checkpoint: Path,
    batch_size: int,
    workers: int | None,
    device: str,
    *extra: str,
) -> tuple[float, dict]:
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
        *([] if workers is None else ["--workers", str(workers)]),
        "--batch-size",
        str(batch_size),
        "--device",
        device,
        "--overwrite",
        "--no-progress",
        "--json",
        *extra,
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


def cli_values(reference: dict[str, float], cli: dict[str, tuple[float, str]]) -> np.ndarray:
    """The CLI's scores in the reference's uid order; every uid must be scored ok."""
    if set(reference) != set(cli):
        raise SystemExit(f"score tables differ in uids: {len(reference)} vs {len(cli)}")
    not_ok = [uid for uid, (_, status) in cli.items() if status != "ok"]
    if not_ok:
        raise SystemExit(f"{len(not_ok)} samples not scored ok by the CLI, e.g. {not_ok[0]}")
    return np.array([cli[uid][0] for uid in reference], dtype=np.float64)


def max_abs_diff(reference: dict[str, float], values: np.ndarray) -> float:
    """Largest |reference - values| over the reference's uids, in its order."""
    return float(np.abs(np.array(list(reference.values())) - values).max())


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (no ties expected in float scores)."""
    rank_a = np.argsort(np.argsort(a))
    rank_b = np.argsort(np.argsort(b))
    return float(np.corrcoef(rank_a, rank_b)[0, 1])


def check_cli_summary(summary: dict, n: int) -> None:
    """The CLI must have scored every sample ok."""
    if summary["samples"] != n or summary["samples_scored"] != n:
        raise SystemExit(
            f"CLI scored {summary['samples_scored']} of {summary['samples']}, expected {n}"
        )
    if summary["by_status"] != {"ok": n}:
        raise SystemExit(f"CLI statuses: {summary['by_status']}, expected all ok")


def peer_available(site: Path) -> bool:
    """Whether clip-retrieval imports from ``site`` (with this interpreter's packages)."""
    check = [sys.executable, "-c", "import clip_retrieval.clip_inference.main"]
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(check, capture_output=True, env=env, check=False).returncode == 0


def run_peer(
    site: Path, pool: Path, work: Path, model: str, checkpoint: Path, batch_size: int
) -> tuple[float, dict[str, float]]:
    """clip-retrieval's inference over the pool's tars; its wall time and scores by tar key."""
    shards = find_shards(pool)
    output = work / "peer-out"
    shutil.rmtree(output, ignore_errors=True)
    dataset = str(pool / f"{{{shards[0].name}..{shards[-1].name}}}.tar")
    per_file = max(len(list(iter_tar_samples(s.tar, TarReadResult()))) for s in shards)
    command = [
        sys.executable, "-c", PEER_RUNNER, dataset, str(output),
        f"open_clip:{model}/{checkpoint.resolve()}", str(batch_size),
        str(len(os.sched_getaffinity(0))), str(per_file),
    ]
    log(f"running clip-retrieval inference over {len(shards)} shards")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(site)})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"clip-retrieval exited with {done.returncode}")
    scores: dict[str, float] = {}
    for part in sorted((output / "metadata").glob("metadata_*.parquet")):
        suffix = part.stem.split("_")[-1]
        image = np.load(output / "img_emb" / f"img_emb_{suffix}.npy").astype(np.float64)
        text = np.load(output / "text_emb" / f"text_emb_{suffix}.npy").astype(np.float64)
        keys = pq.read_table(part, columns=["key"]).column("key").to_pylist()
        scores.update(zip(keys, (image * text).sum(axis=1).tolist(), strict=True))
    return wall, scores


def uid_of_keys(run: Path, pool: Path) -> dict[str, str]:
    """Tar key -> uid, from the run's pool table."""
    out: dict[str, str] = {}
    for shard in find_shards(pool):
        table = pq.read_table(RunPaths(run).pool_part(shard.index), columns=["uid", "key"])
        out.update(zip(table.column("key").to_pylist(), table.column("uid").to_pylist(),
                       strict=True))
    return out


def measure(
    model: str,
    samples: list[Sample],
    run: Path,
    batch_size: int,
    workers: int | None,
    work: Path,
    device: str,
    lossy: bool,
    peer_site: Path | None = None,
    pool: Path | None = None,
) -> Figures:
    """Run the three measurements for ``model`` and check the scores; return the figures."""
    load = os.getloadavg()[0]
    if load > 0.5:
        log(f"warning: load average {load:.2f} before starting; other work may skew the figures")
    checkpoint = prepare_weights(work, model)
    threads = len(os.sched_getaffinity(0))  # torch threads of the model-only paths: every core
    torch.set_num_threads(threads)
    loaded = load_model(ModelSpec(model, pretrained=str(checkpoint)), device=device)
    data = decode_all(loaded, samples)
    n = len(samples)
    log(f"{model}: plain model on {device}, {n} samples, batch {batch_size}, {threads} threads")
    plain = run_plain_model(loaded, data, batch_size)
    log(f"{model}: our model path")
    ours = run_our_model(loaded, data, batch_size)
    token_lengths = Scorer(loaded).text_lengths(data.tokens).float().mean().item()
    decode_seconds = data.seconds
    del loaded, data

    def scored_by_cli(*extra: str) -> tuple[float, dict, np.ndarray]:
        """Run the CLI, check that it scored every sample, read its scores in plain's order."""
        wall, summary = run_cli(run, model, checkpoint, batch_size, workers, device, *extra)
        check_cli_summary(summary, n)
        return wall, summary, cli_values(plain.scores, cli_scores(run))

    on_gpu = device == "cuda"
    cpu_decode = ("--decode", "cpu") if on_gpu else ()
    exact = ("--precision", "fp32", *cpu_decode) if on_gpu else ()
    wall, summary, fp32_values = scored_by_cli(*exact)
    plain_rate = n / plain.seconds
    stage_rate = float(summary["samples_per_second"])
    figures = Figures(
        model=model,
        samples=n,
        batch_size=batch_size,
        threads=threads,
        cli_workers="default" if workers is None else str(workers),
        device=device,
        mean_caption_tokens=token_lengths,
        preprocess_samples_per_second=n / decode_seconds,
        plain_model_samples_per_second=plain_rate,
        our_model_samples_per_second=n / ours.seconds,
        end_to_end_process_samples_per_second=n / wall,
        end_to_end_stage_samples_per_second=stage_rate,
        process_wall_seconds=wall,
        stage_wall_seconds=float(summary["wall_seconds"]),
        ratio_stage_vs_plain=stage_rate / plain_rate,
        ratio_process_vs_plain=(n / wall) / plain_rate,
        ratio_stage_vs_our_model=stage_rate / (n / ours.seconds),
        max_abs_diff_ours_vs_plain=max_abs_diff(plain.scores, np.array(list(ours.scores.values()))),
        max_abs_diff_cli_vs_plain=max_abs_diff(plain.scores, fp32_values),
        load_average_before=load,
    )
    if on_gpu:
        _, gpu_decoded, values = scored_by_cli("--precision", "fp32", "--decode", "cuda")
        figures.cuda_decode_stage_samples_per_second = float(gpu_decoded["samples_per_second"])
        figures.cuda_decode_max_abs_diff = max_abs_diff(plain.scores, values)
    if lossy:
        precision = "fp16" if on_gpu else "bf16"
        _, reduced, values = scored_by_cli("--precision", precision, *cpu_decode)
        figures.lossy_precision = precision
        figures.lossy_stage_samples_per_second = float(reduced["samples_per_second"])
        figures.lossy_max_abs_diff = float(np.abs(values - fp32_values).max())
        figures.lossy_spearman = spearman(values, fp32_values)
    if peer_site is not None and pool is not None:
        peer_wall, by_key = run_peer(peer_site, pool, work, model, checkpoint, batch_size)
        uids = uid_of_keys(run, pool)
        peer = {uids[key]: score for key, score in by_key.items()}
        if set(peer) != set(plain.scores):
            raise SystemExit(f"clip-retrieval scored {len(peer)} samples, expected {n}")
        figures.peer_process_samples_per_second = n / peer_wall
        figures.peer_max_abs_diff = max_abs_diff(
            plain.scores, np.array([peer[uid] for uid in plain.scores]))
    return figures


def render(figures: list[Figures]) -> str:
    """The figures as an aligned table, one column per model."""

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}/s"

    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    rows = [
        ("samples", [str(f.samples) for f in figures]),
        ("batch size / torch threads", [f"{f.batch_size} / {f.threads}" for f in figures]),
        ("filter-pool score --workers", [f.cli_workers for f in figures]),
        ("device", [f.device for f in figures]),
        ("mean caption tokens (with sot/eot)", [f"{f.mean_caption_tokens:.1f}" for f in figures]),
        ("decode+preprocess, 1 process", [rate(f.preprocess_samples_per_second) for f in figures]),
        ("plain open_clip model", [rate(f.plain_model_samples_per_second) for f in figures]),
        ("our model path (info)", [rate(f.our_model_samples_per_second) for f in figures]),
        ("end-to-end, score stage", [rate(f.end_to_end_stage_samples_per_second) for f in figures]),
        (
            "end-to-end, process wall",
            [rate(f.end_to_end_process_samples_per_second) for f in figures],
        ),
        ("ratio stage / plain model", [f"{f.ratio_stage_vs_plain:.2f}x" for f in figures]),
        ("ratio process wall / plain model", [f"{f.ratio_process_vs_plain:.2f}x" for f in figures]),
        ("ratio stage / our model path", [f"{f.ratio_stage_vs_our_model:.2f}x" for f in figures]),
        ("max |diff| ours vs plain", [f"{f.max_abs_diff_ours_vs_plain:.2g}" for f in figures]),
        ("max |diff| CLI vs plain", [f"{f.max_abs_diff_cli_vs_plain:.2g}" for f in figures]),
        (
            "end-to-end, JPEG decode on the GPU",
            [rate(f.cuda_decode_stage_samples_per_second) for f in figures],
        ),
        (
            "GPU decode max |diff| vs plain",
            [number(f.cuda_decode_max_abs_diff, ".2g") for f in figures],
        ),
        ("lossy precision", [f.lossy_precision or "-" for f in figures]),
        ("lossy end-to-end", [rate(f.lossy_stage_samples_per_second) for f in figures]),
        ("lossy max |diff| vs fp32", [number(f.lossy_max_abs_diff, ".2g") for f in figures]),
        ("lossy Spearman vs fp32", [number(f.lossy_spearman, ".5f") for f in figures]),
        (
            "clip-retrieval 2.45, process wall",
            [rate(f.peer_process_samples_per_second) for f in figures],
        ),
        (
            "ratio stage / clip-retrieval",
            [number(f.end_to_end_stage_samples_per_second / f.peer_process_samples_per_second,
                    ".2f") + "x" if f.peer_process_samples_per_second else "-" for f in figures],
        ),
        (
            "ratio process wall / clip-retrieval",
            [number(f.end_to_end_process_samples_per_second / f.peer_process_samples_per_second,
                    ".2f") + "x" if f.peer_process_samples_per_second else "-" for f in figures],
        ),
        (
            "clip-retrieval max |diff| vs plain (fp16 embeddings)",
            [number(f.peer_max_abs_diff, ".2g") for f in figures],
        ),
        ("load average before (1 min)", [f"{f.load_average_before:.2f}" for f in figures]),
    ]
    width = max(len(label) for label, _ in rows)
    header = f"{'model':<{width}}  " + "  ".join(f"{f.model:>14}" for f in figures)
    lines = [header] + [
        f"{label:<{width}}  " + "  ".join(f"{v:>14}" for v in values) for label, values in rows
    ]
    for name, target in TARGETS.items():
        met = ["met" if f.ratio_stage_vs_plain >= target else "MISSED" for f in figures]
        lines.append(f"target {name}: " + ", ".join(met))
    tolerance_met = all(f.max_abs_diff_cli_vs_plain <= SCORE_TOLERANCE for f in figures)
    lines.append(f"scores within {SCORE_TOLERANCE} of plain: {'yes' if tolerance_met else 'NO'}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="ViT-S-32,ViT-B-32", help="open_clip architectures, comma-separated"
    )
    parser.add_argument("--samples", type=int, default=2000, help="pool size (at least)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--workers", type=int, default=None, help="filter-pool score --workers (default: its own)"
    )
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="pool, run and weights")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--lossy", action="store_true", help="also measure bf16 (CPU) or fp16 (CUDA)"
    )
    parser.add_argument(
        "--peer", action="store_true", help="also run clip-retrieval's inference (see above)"
    )
    parser.add_argument("--peer-site", type=Path, default=DEFAULT_PEER_SITE,
                        help="folder holding clip-retrieval (benchmarks/install_peer.sh)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Measure every model and print the figures, as a table or as JSON."""
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    pool = prepare_pool(args.work, args.samples)
    run = prepare_run(args.work, pool)
    samples = read_samples(run, pool)
    peer_site = None
    if args.peer:
        if not peer_available(args.peer_site):
            raise SystemExit(f"--peer: clip-retrieval does not import from {args.peer_site}; "
                             "run benchmarks/install_peer.sh")
        peer_site = args.peer_site
    figures = [
        measure(
            model, samples, run, args.batch_size, args.workers, args.work, args.device,
            args.lossy, peer_site, pool,
        )
        for model in args.models.split(",")
    ]
    if args.json:
        print(json.dumps([asdict(f) for f in figures], indent=2))
    else:
        print(render(figures))


if __name__ == "__main__":
    main()
