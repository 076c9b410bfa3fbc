"""GPU scoring at scale: ``filter-pool score`` on one GPU over a pool of >= 50,000 512 px JPEGs.

Writes (with every core) a pool of photo-like 512 px JPEGs in img2dataset layout: the
synthetic shapes and captions of ``tests.generators.synthetic`` with smooth grain added, so a
JPEG weighs what a web photo does (about 40-70 KB, not the 6-13 KB of flat shapes); a set of
distinct images is repeated under new keys, since decoding costs the same either way. Then it
ingests the pool, saves one random initialisation per model and reports:

* where a sample's time goes, one step at a time in this process over one shard: reading the
  tar, the JPEG header check, tokenising, JPEG decode + eval transform on the GPU (one image
  per call, and a batch per call), Pillow decode + transform on one CPU thread;
* the model alone, fp16 autocast, on images already on the GPU: plain open_clip
  (``encode_image`` + ``encode_text`` padded to 77 tokens) and our encoders;
* end to end: ``filter-pool score --device cuda --precision fp16 --decode cuda`` as a
  subprocess over the whole pool, for each ``--workers`` count (worker processes sharing the
  GPU, each with its own shard in flight); the stage's rate (worker start and model load
  included), the rate inside shards, and the process wall;
* exactness: fp32 on the GPU against fp32 on the CPU (same Pillow-decoded inputs, our
  encoders and plain open_clip), fp16 end to end against fp32 on the GPU (largest difference,
  Spearman), GPU decode against Pillow decode (fp32).

Figures go to stdout as JSON (and to ``--out``, rewritten after every step, so a run cut
short keeps what it measured); progress to stderr. Nothing here runs in CI. Usage::

    python benchmarks/score_gpu.py [--samples 50000] [--shard-size 5000]
        [--models ViT-B-32,ViT-L-14] [--workers 1,4] [--batch-size 256] [--work DIR] [--out F]

Targets (issue 27, one H100): ViT-B-32 >= 5,000 samples/s and ViT-L-14 >= 650 samples/s end to
end; fp32 on the GPU within 1e-5 of the CPU; fp16 Spearman >= 0.9999.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import _paths  # noqa: F401  (the repository root on sys.path: tests.generators)
import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from score_throughput import prepare_weights, spearman, uid_of_keys

from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.img2dataset import ShardSample, write_img2dataset_shard
from curate.io.shards import TarReadResult, find_shards, iter_tar_samples
from curate.io.workspace import RunPaths
from curate.models import ModelSpec, load_model
from curate.score.image_loader import EvalTransform, PilImageLoader, TensorJpegLoader
from curate.score.scorer import Scorer
from curate.score.shard import Batch, encode_in_windows
from tests.generators.synthetic import _good_sample

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / "benchmarks" / "_work" / "score_gpu"
IMAGE_SIZE = 512
GRAIN_SIGMA = 12.0
DISTINCT_CHUNK = 250
TARGETS = {"ViT-B-32": 5000.0, "ViT-L-14": 650.0}
STEPS = ("costs", "model", "exact", "precision", "e2e", "fp16")

MAX_PIXELS = 2**28
_templates: list[ShardSample] = []  # distinct samples, inherited by the shard writers (fork)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _grainy_samples(first: int) -> list[ShardSample]:
    """``DISTINCT_CHUNK`` synthetic samples from index ``first``, with smooth grain added."""
    rng = np.random.default_rng([0, first])
    fields = []
    for _ in range(4):
        noise = rng.normal(0.0, GRAIN_SIGMA, (128, 128, 3)).astype(np.float32)
        channels = [
            Image.fromarray(noise[..., c], mode="F").resize((IMAGE_SIZE,) * 2, Image.BICUBIC)
            for c in range(3)
        ]
        fields.append(np.stack([np.asarray(c) for c in channels], axis=-1).astype(np.int16))
    out = []
    for index in range(first, first + DISTINCT_CHUNK):
        sample = _good_sample(rng, f"{index:09d}", IMAGE_SIZE, 90)
        pixels = np.asarray(Image.open(io.BytesIO(sample.image)).convert("RGB"), dtype=np.int16)
        grain = np.roll(fields[index % 4], int(rng.integers(IMAGE_SIZE)), axis=0)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8)).save(
            buffer, format="JPEG", quality=90
        )
        out.append(dataclasses.replace(sample, image=buffer.getvalue(), sha256=None))
    return out


def _write_shard(args: tuple[Path, int, int, int]) -> None:
    root, shard, shard_size, total = args
    first = shard * shard_size
    samples = []
    for index in range(first, min(first + shard_size, total)):
        template = _templates[index % len(_templates)]
        key = f"{index:09d}"
        samples.append(dataclasses.replace(template, key=key, url=f"http://127.0.0.1/{key}.jpg"))
    write_img2dataset_shard(root, f"{shard:05d}", samples)


def write_pool(work: Path, samples: int, shard_size: int, distinct: int) -> Path:
    """The pool (reused when complete): ``distinct`` grainy samples repeated to ``samples``."""
    pool = work / f"pool-{samples}-{shard_size}"
    if (work / f"{pool.name}.complete").is_file():
        return pool
    shutil.rmtree(pool, ignore_errors=True)
    pool.mkdir(parents=True)
    context = multiprocessing.get_context("fork")
    firsts = range(0, max(distinct, DISTINCT_CHUNK), DISTINCT_CHUNK)
    with context.Pool(os.cpu_count()) as workers:
        _templates[:] = [s for chunk in workers.map(_grainy_samples, firsts) for s in chunk]
    shards = math.ceil(samples / shard_size)
    with context.Pool(min(shards, os.cpu_count() or 1)) as workers:  # forked: see _templates
        workers.map(_write_shard, [(pool, s, shard_size, samples) for s in range(shards)])
    (work / f"{pool.name}.complete").write_text("complete\n")
    return pool


def shard_samples(pool: Path, limit: int) -> list[tuple[bytes, str]]:
    """(image bytes, caption) of the first ``limit`` samples of the first shard."""
    out: list[tuple[bytes, str]] = []
    for sample in iter_tar_samples(find_shards(pool)[0].tar, TarReadResult()):
        image, caption = sample.image(), sample.caption()
        out.append((image[1], caption))
        if len(out) == limit:
            break
    return out


def tensor_loader(preprocess, device: torch.device) -> TensorJpegLoader:
    """The loader ``--decode cuda`` uses (on ``device``; the CPU for a dry run)."""
    transform = EvalTransform.from_compose(preprocess)
    if transform is None:
        raise SystemExit("the model's eval transform is not a plain resize + centre crop")
    return TensorJpegLoader(transform, device, PilImageLoader(preprocess, MAX_PIXELS), MAX_PIXELS)


def precision(device: torch.device) -> str:
    return "fp16" if device.type == "cuda" else "fp32"


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def timed(fn: Callable[[], object], device: torch.device | None = None) -> float:
    started = time.perf_counter()
    fn()
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def step_costs(
    pool: Path, model: str, checkpoint: Path, batch_size: int, device: torch.device
) -> dict:
    """Samples per second of each step of the stage alone, in this process (the CPU steps on
    one thread, what one worker process spends per sample)."""
    loaded = load_model(ModelSpec(model, pretrained=str(checkpoint)), device=str(device))
    scorer = Scorer(loaded, precision(device))
    tar = find_shards(pool)[0].tar
    count = 0

    def read_tar() -> None:
        nonlocal count
        for sample in iter_tar_samples(tar, TarReadResult()):
            sample.image(), sample.caption()
            count += 1

    seconds = timed(read_tar)
    figures = {"tar_read": rate(count, seconds)}
    samples = shard_samples(pool, 4096)
    images = [image for image, _ in samples]
    captions = [caption for _, caption in samples]
    figures["mean_jpeg_kb"] = round(sum(map(len, images)) / len(images) / 1024, 1)
    loader = tensor_loader(loaded.preprocess, device)
    figures["jpeg_header_check"] = rate(
        len(images), timed(lambda: [loader._decodable(i) for i in images])
    )
    figures["tokenize"] = rate(len(captions), timed(lambda: scorer.tokenize(captions)))
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    loader.decode_batch(batches[0])  # warm-up: the decoder's buffers
    figures["gpu_decode_batched"] = rate(
        len(images), timed(lambda: [loader.decode_batch(b) for b in batches], device)
    )
    some = images[:1024]
    figures["gpu_decode_one_per_call"] = rate(
        len(some), timed(lambda: [loader(i) for i in some], device)
    )
    pil = PilImageLoader(loaded.preprocess, MAX_PIXELS)
    torch.set_num_threads(1)
    few = images[:256]
    figures["pillow_decode_1_thread"] = rate(len(few), timed(lambda: [pil(i) for i in few]))
    torch.set_num_threads(os.cpu_count() or 1)
    host = torch.randn(batch_size, 3, 224, 224)
    host = host.pin_memory() if device.type == "cuda" else host
    host.to(device)
    copy = timed(lambda: [host.to(device, non_blocking=True) for _ in range(20)], device)
    figures["host_to_device_fp32_batches"] = rate(20 * batch_size, copy)
    return figures


def model_only(
    model: str, checkpoint: Path, pool: Path, batch_size: int, count: int, device: torch.device
) -> dict:
    """fp16 on the GPU, inputs already there: plain open_clip and our encoders."""
    loaded = load_model(ModelSpec(model, pretrained=str(checkpoint)), device=str(device))
    samples = shard_samples(pool, count)
    loader = tensor_loader(loaded.preprocess, device)
    images = torch.stack(
        [t for i in range(0, len(samples), batch_size)
         for t in loader.decode_batch([s[0] for s in samples[i : i + batch_size]])]
    )
    tokens = loaded.tokenizer([caption for _, caption in samples])
    starts = range(0, len(samples), batch_size)

    def plain() -> None:
        half = device.type == "cuda"
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=half):
            for s in starts:
                a = loaded.model.encode_image(images[s : s + batch_size], normalize=True)
                b = loaded.model.encode_text(tokens[s : s + batch_size].to(device), normalize=True)
                (a * b).sum(-1).float().cpu()

    scorer = Scorer(loaded, precision(device))

    def ours() -> None:
        batches = (
            Batch(list(range(s, min(s + batch_size, len(samples)))),
                  images[s : s + batch_size], tokens[s : s + batch_size])
            for s in starts
        )
        for _ in encode_in_windows(scorer, batches, batch_size):
            pass

    plain(), ours()  # warm-up
    return {
        "precision": precision(device),
        "plain_open_clip": rate(len(samples), timed(plain, device)),
        "our_encoders": rate(len(samples), timed(ours, device)),
    }


def exactness(model: str, checkpoint: Path, pool: Path, count: int, device: torch.device) -> dict:
    """fp32: GPU against CPU on the same Pillow-decoded inputs; GPU decode against Pillow."""
    samples = shard_samples(pool, count)
    cpu = load_model(ModelSpec(model, pretrained=str(checkpoint)), device="cpu")
    gpu = load_model(ModelSpec(model, pretrained=str(checkpoint)), device=str(device))
    pil = PilImageLoader(cpu.preprocess, MAX_PIXELS)
    images = torch.stack([pil(image) for image, _ in samples])
    tokens = cpu.tokenizer([caption for _, caption in samples])
    figures = {}
    for name, loaded in (("cpu", cpu), ("gpu", gpu)):
        scorer = Scorer(loaded, "fp32")
        figures[f"ours_{name}"] = scorer.encode(images, tokens).scores
        with torch.inference_mode():
            a = loaded.model.encode_image(images.to(loaded.device), normalize=True)
            b = loaded.model.encode_text(tokens.to(loaded.device), normalize=True)
            figures[f"plain_{name}"] = (a * b).sum(-1).cpu().numpy()
    loader = tensor_loader(gpu.preprocess, device)
    decoded = torch.stack(loader.decode_batch([image for image, _ in samples]))
    on_gpu_decode = Scorer(gpu, "fp32").encode(decoded, tokens).scores
    return {
        "samples": len(samples),
        "fp32_gpu_vs_cpu_ours": float(np.abs(figures["ours_gpu"] - figures["ours_cpu"]).max()),
        "fp32_gpu_vs_cpu_plain": float(np.abs(figures["plain_gpu"] - figures["plain_cpu"]).max()),
        "fp32_ours_vs_plain_gpu": float(np.abs(figures["ours_gpu"] - figures["plain_gpu"]).max()),
        "gpu_decode_vs_pillow_fp32": float(np.abs(on_gpu_decode - figures["ours_gpu"]).max()),
        "gpu_decode_vs_pillow_spearman": spearman(on_gpu_decode, figures["ours_gpu"]),
    }


def precisions(model: str, checkpoint: Path, pool: Path, count: int, device: torch.device) -> dict:
    """Reduced precision against fp32, in this process on the same GPU-decoded inputs: our
    encoders in fp16 and bf16, and plain open_clip in fp16 (is a difference ours or the
    model's?), with the spread of the fp32 scores that a rank correlation is measured against."""
    loaded = load_model(ModelSpec(model, pretrained=str(checkpoint)), device=str(device))
    samples = shard_samples(pool, count)
    loader = tensor_loader(loaded.preprocess, device)
    images = torch.cat([torch.stack(loader.decode_batch([image for image, _ in samples[i:i + 256]]))
                        for i in range(0, len(samples), 256)])
    tokens = loaded.tokenizer([caption for _, caption in samples])

    def ours(precision_name: str):
        scorer = Scorer(loaded, precision_name)
        parts = [scorer.encode(images[i : i + 256], tokens[i : i + 256])
                 for i in range(0, len(samples), 256)]
        return (np.concatenate([p.scores for p in parts]).astype(np.float64),
                np.concatenate([p.image_embeddings for p in parts]),
                np.concatenate([p.text_embeddings for p in parts]))

    def plain(dtype: torch.dtype):
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
            a = torch.cat([loaded.model.encode_image(images[i:i + 256], normalize=True).float()
                           for i in range(0, len(samples), 256)])
            b = torch.cat([loaded.model.encode_text(tokens[i:i + 256].to(device), normalize=True)
                           .float() for i in range(0, len(samples), 256)])
        return (a * b).sum(-1).cpu().numpy().astype(np.float64), a.cpu().numpy(), b.cpu().numpy()

    reference = ours("fp32")
    figures: dict = {"samples": len(samples), "fp32_score_std": float(reference[0].std())}
    variants = {"ours_bf16": lambda: ours("bf16")}
    if device.type == "cuda":
        variants |= {"ours_fp16": lambda: ours("fp16"), "plain_fp16": lambda: plain(torch.float16)}
    for name, compute in variants.items():
        scores, image, text = compute()
        figures[name] = {
            "max_abs_diff": float(np.abs(scores - reference[0]).max()),
            "spearman": spearman(scores, reference[0]),
            "image_embedding_max_diff": float(np.abs(image - reference[1]).max()),
            "text_embedding_max_diff": float(np.abs(text - reference[2]).max()),
        }
    return figures


def filter_pool_command() -> list[str]:
    script = Path(sys.executable).parent / "filter-pool"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "curate"]


def end_to_end(
    run: Path, model: str, checkpoint: Path, batch_size: int, workers: int, device: torch.device,
    env: dict[str, str] | None = None,
) -> dict:
    """``filter-pool score`` on the GPU, fp16, JPEG decode on the GPU, ``workers`` processes."""
    name = f"e2e_{workers}"
    decode = "cuda" if device.type == "cuda" else "cpu"
    command = [
        *filter_pool_command(), "score", str(run), "--model", model,
        "--pretrained", str(checkpoint), "--name", name, "--workers", str(workers),
        "--batch-size", str(batch_size), "--device", device.type,
        "--precision", precision(device), "--decode", decode,
        "--overwrite", "--no-progress", "--json",
    ]
    log("running: " + " ".join(command))
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300,
                          env=None if env is None else {**os.environ, **env})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr[-2000:]}")
    summary = json.loads(done.stdout)
    in_shards = float(summary["seconds"]) / workers
    return {
        "workers": workers,
        "samples": summary["samples_scored"],
        "by_status": summary["by_status"],
        "stage_samples_per_second": summary["samples_per_second"],
        "stage_wall_seconds": summary["wall_seconds"],
        "in_shards_samples_per_second": rate(summary["samples_scored"], in_shards),
        "process_wall_seconds": round(wall, 2),
        "name": name,
    }


def end_to_end_mps(
    run: Path, model: str, checkpoint: Path, batch_size: int, workers: int, device: torch.device
) -> dict:
    """``end_to_end`` with the worker processes sharing the GPU through CUDA MPS (kernels of
    several processes run at once instead of time-sliced); the daemon is stopped after."""
    env = {"CUDA_MPS_PIPE_DIRECTORY": "/tmp/mps-pipe", "CUDA_MPS_LOG_DIRECTORY": "/tmp/mps-log"}
    for folder in env.values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    mps_env = {**os.environ, **env}
    subprocess.run(["nvidia-cuda-mps-control", "-d"], env=mps_env, check=True, timeout=30)
    try:
        return end_to_end(run, model, checkpoint, batch_size, workers, device, env)
    finally:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, env=mps_env,
                       check=False, timeout=30)


def scores_by_uid(run: Path, name: str) -> dict[str, float]:
    paths = RunPaths(run)
    out: dict[str, float] = {}
    for part in sorted(paths.scores_dir(name).glob("part-*.parquet")):
        table = pq.read_table(part, columns=["uid", f"{name}_score"])
        out.update(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))
    return out


def fp16_against_fp32(
    run: Path, pool: Path, model: str, checkpoint: Path, name: str, device: torch.device
) -> dict:
    """The end-to-end fp16 scores of the first shard's samples against fp32 on the GPU, both
    with GPU decode."""
    loaded = load_model(ModelSpec(model, pretrained=str(checkpoint)), device=str(device))
    scorer = Scorer(loaded, "fp32")
    uid_of_key = uid_of_keys(run, pool)
    keys, images, captions = [], [], []
    for sample in iter_tar_samples(find_shards(pool)[0].tar, TarReadResult()):
        keys.append(sample.key)
        images.append(sample.image()[1])
        captions.append(sample.caption())
        if len(keys) == 2048:
            break
    loader = tensor_loader(loaded.preprocess, device)
    reference = []
    for start in range(0, len(images), 256):
        decoded = torch.stack(loader.decode_batch(images[start : start + 256]))
        tokens = scorer.tokenize(captions[start : start + 256])
        reference.append(scorer.encode(decoded, tokens).scores)
    fp32 = np.concatenate(reference).astype(np.float64)
    e2e = scores_by_uid(run, name)
    fp16 = np.array([e2e[uid_of_key[k]] for k in keys], dtype=np.float64)
    return {
        "samples": len(keys),
        "max_abs_diff": float(np.abs(fp16 - fp32).max()),
        "over_1e-3": int((np.abs(fp16 - fp32) > 1e-3).sum()),
        "spearman": spearman(fp16, fp32),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--shard-size", type=int, default=5_000)
    parser.add_argument("--distinct", type=int, default=8_000, help="distinct images")
    parser.add_argument("--models", default="ViT-B-32,ViT-L-14")
    parser.add_argument("--workers", default="1,4", help="worker counts for the first model; "
                        "the others run with the fastest")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--exact-samples", type=int, default=64)
    parser.add_argument("--steps", default=",".join(STEPS), help="which of " + ",".join(STEPS)
                        + " (mps: one more end-to-end run under CUDA MPS, as root)")
    parser.add_argument("--e2e-models", default=None, help="models run end to end (all)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a dry run of this script with a tiny model, not a figure")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("score_gpu.py needs a CUDA device (--device cpu: a dry run)")
    device = torch.device(args.device)
    args.work.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    figures: dict = {"device": name, "torch": torch.__version__,
                     "cpus": os.cpu_count(), "samples": args.samples, "steps": {}}

    def save() -> None:
        if args.out is not None:
            args.out.write_text(json.dumps(figures, indent=2))

    def step(name: str, fn: Callable[..., object], *fn_args: object) -> object:
        log(f"== {name}")
        started = time.perf_counter()
        try:
            result = fn(*fn_args)
        except Exception as exc:
            figures["steps"][name] = {"error": f"{type(exc).__name__}: {exc}"[:3000]}
            log(traceback.format_exc())
            result = None
        else:
            figures["steps"][name] = result if isinstance(result, dict) else {}
        figures["steps"][name]["seconds"] = round(time.perf_counter() - started, 2)
        log(json.dumps(figures["steps"][name]))
        save()
        return result

    pool = step("write_pool", lambda: {"pool": str(write_pool(
        args.work, args.samples, args.shard_size, args.distinct))})
    pool = Path(pool["pool"])
    run = args.work / f"run-{pool.name}"
    step("ingest", lambda: {"samples": ingest_pool(IngestConfig(pool=pool, run=run)).samples})
    models = args.models.split(",")
    batch, exact = args.batch_size, args.exact_samples
    worker_counts = [int(w) for w in args.workers.split(",")]
    best_workers = worker_counts[0]
    steps = set(args.steps.split(","))
    e2e_models = models if args.e2e_models is None else args.e2e_models.split(",")
    for number, model in enumerate(models):
        checkpoint = prepare_weights(args.work, model)
        if number == 0 and "costs" in steps:
            step(f"{model}: step costs", step_costs, pool, model, checkpoint, batch, device)
        if "model" in steps:
            step(f"{model}: model only", model_only, model, checkpoint, pool, batch, 2048, device)
        if "exact" in steps:
            step(f"{model}: exactness fp32", exactness, model, checkpoint, pool, exact, device)
        if "precision" in steps:
            step(f"{model}: precisions", precisions, model, checkpoint, pool, 1024, device)
        best_rate = 0.0
        if "e2e" not in steps or model not in e2e_models:
            continue
        for workers in worker_counts if number == 0 else [best_workers]:
            result = step(f"{model}: end to end, {workers} workers",
                          end_to_end, run, model, checkpoint, batch, workers, device)
            if result and result["stage_samples_per_second"] > best_rate:
                best_rate, best_workers = result["stage_samples_per_second"], workers
        if "mps" in steps and best_rate:
            step(f"{model}: end to end, {best_workers} workers, CUDA MPS", end_to_end_mps,
                 run, model, checkpoint, batch, best_workers, device)
        if best_rate and "fp16" in steps:
            step(f"{model}: fp16 end to end vs fp32", fp16_against_fp32,
                 run, pool, model, checkpoint, f"e2e_{best_workers}", device)
            target = TARGETS.get(model)
            figures[f"{model}: best stage rate"] = {"samples_per_second": best_rate,
                                                   "workers": best_workers, "target": target}
            save()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
