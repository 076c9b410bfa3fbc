"""Training throughput of `filter-pool train-dfn`: steps/s, samples/s and data-wait fraction.

Builds (or reuses) a clean shapes pool (``tests.generators.shapes``, JPEGs of ``--image-size`` px,
captions like "a red circle") under the work directory, then trains each model from random
init with ``curate.train.train_clip`` (the code behind ``train-dfn``) for ``--warmup-steps``
unmeasured steps plus ``--steps`` measured ones. Per model it prints

* steps/s and samples/s over the measured steps (optimizer steps only: forward, backward,
  AdamW, including the time blocked on the DataLoader);
* the data-wait fraction: time blocked in ``next()`` on the DataLoader over the measured
  step time (target under 10%), with the number of DataLoader worker processes.

With ``--reference`` it also trains each model side by side in this process: ``train-dfn
--decoded-cache`` (``decoded_cache=True``), a plain loop over preloaded tensors (same model,
batch, fused AdamW and CLIP loss, no data pipeline: the ceiling for the data path), and that
loop with the token embedding frozen (the most a compact vocabulary or a sparse embedding update
could buy: neither gradient nor optimizer state for the 49,408-row table), twice each.

Usage::

    .venv/bin/python benchmarks/train_throughput.py [--models fp-tiny-vit,ViT-S-32]
        [--batch-size 64] [--steps 20] [--warmup-steps 5] [--workers N] [--reference] [--json]

Progress goes to stderr; the figures go to stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import _paths  # noqa: F401  (the repository root on sys.path: tests.generators)
import torch

from curate.train import TrainConfig, train_clip
from tests.generators.shapes import write_shapes_pool

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / "benchmarks" / "_work" / "train_throughput"


def _pool(work: Path, samples: int, image_size: int) -> Path:
    root = work / f"shapes-{samples}-{image_size}px"
    if not (root / "_complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        per_shard = min(1000, samples)
        write_shapes_pool(
            root,
            num_shards=-(-samples // per_shard),
            samples_per_shard=per_shard,
            image_size=image_size,
        )
        (root / "_complete").write_text("")
    return root


def measure(model: str, pool: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``model`` briefly and report the measured steps only."""
    total = args.warmup_steps + args.steps
    marks: dict[int, float] = {}

    def on_step(step: int, loss: float) -> None:
        marks[step] = time.perf_counter()
        print(f"  {model} step {step}/{total} loss {loss:.3f}", file=sys.stderr)

    config = TrainConfig(
        data=pool,
        out=out,
        model=model,
        steps=total,
        batch_size=args.batch_size,
        holdout=0,
        warmup=0,
        lr=5e-4,
        workers=args.workers,
        checkpoint_every=10 * total,
        val_every=10 * total,
        device=args.device,
        overwrite=True,
        progress=False,
        decoded_cache=args.decoded_cache,
    )
    result = train_clip(config, on_step=on_step)
    with open(out / "loss_curve.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if int(r["step"]) > args.warmup_steps]
    step_seconds = sum(float(r["step_seconds"]) for r in rows)
    wait_seconds = sum(float(r["data_wait_seconds"]) for r in rows)
    span = marks[total] - marks[args.warmup_steps] if args.warmup_steps else step_seconds
    losses = [float(r["loss"]) for r in rows]
    return {
        "model": model,
        "parameters": result.record["model"]["parameters"],
        "batch_size": args.batch_size,
        "measured_steps": len(rows),
        "steps_per_second": len(rows) / span,
        "samples_per_second": len(rows) * args.batch_size / span,
        "data_wait_fraction": wait_seconds / step_seconds,
        "workers": result.record["run"]["workers"],
        "device": result.record["run"]["device"],
        "torch_threads": torch.get_num_threads(),
        "loss_first_measured": losses[0],
        "loss_last": losses[-1],
    }


def _plain_loop(model: str, batch_size: int, steps: int, warmup: int,
                frozen_tokens: bool) -> float:
    """Samples/s of a bare training loop over preloaded tensors (random init, fused AdamW,
    symmetric CLIP loss), ``frozen_tokens``: the token embedding takes no gradient."""
    import torch.nn.functional as F

    from curate.models import ModelSpec
    from curate.models.spec import load_model

    torch.manual_seed(0)
    net = load_model(ModelSpec(model, random_init=True)).model.train()
    size = net.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    context = net.positional_embedding.shape[0]
    images = torch.randn(batch_size * 4, 3, size, size)
    tokens = torch.randint(1, 49_000, (batch_size * 4, context))
    net.token_embedding.weight.requires_grad_(not frozen_tokens)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=5e-4,
                                  weight_decay=0.2, fused=True)
    labels = torch.arange(batch_size)
    started = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        rows = slice((step % 4) * batch_size, (step % 4 + 1) * batch_size)
        out = net(images[rows], tokens[rows])
        image, text, scale = (out["image_features"], out["text_features"],
                              out["logit_scale"]) if isinstance(out, dict) else out[:3]
        logits = scale * image @ text.t()
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - started)


def reference(model: str, pool: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """train-dfn --decoded-cache, the plain loop and the plain loop with frozen tokens, each
    twice, interleaved: samples/s."""
    figures: dict[str, list[float]] = {"decoded_cache": [], "plain": [], "plain_frozen_tokens": []}
    cached = argparse.Namespace(**{**vars(args), "decoded_cache": True})
    for _ in range(2):
        figures["decoded_cache"].append(measure(model, pool, out, cached)["samples_per_second"])
        for name, frozen in (("plain", False), ("plain_frozen_tokens", True)):
            figures[name].append(_plain_loop(model, args.batch_size, args.steps,
                                             args.warmup_steps, frozen))
    return {"model": model, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fp-tiny-vit,ViT-S-32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--reference", action="store_true",
                        help="also --decoded-cache, a plain loop and one with frozen tokens")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.decoded_cache = False

    args.work.mkdir(parents=True, exist_ok=True)
    print(f"pool: {args.samples} pairs at {args.image_size} px under {args.work}", file=sys.stderr)
    pool = _pool(args.work, args.samples, args.image_size)
    results = []
    for model in args.models.split(","):
        print(f"training {model} for {args.warmup_steps}+{args.steps} steps", file=sys.stderr)
        results.append(measure(model, pool, args.work / f"out-{model}", args))
    references = [reference(m, pool, args.work / f"ref-{m}", args)
                  for m in args.models.split(",")] if args.reference else []
    if args.json:
        print(json.dumps({"train_dfn": results, "reference": references}, indent=2))
        return
    print(
        f"{'model':<14} {'params':>10} {'batch':>6} {'steps/s':>8} {'samples/s':>10} "
        f"{'data wait':>10} {'workers':>8} {'device':>7}"
    )
    for r in results:
        print(
            f"{r['model']:<14} {r['parameters']:>10,} {r['batch_size']:>6} "
            f"{r['steps_per_second']:>8.3f} {r['samples_per_second']:>10.1f} "
            f"{100 * r['data_wait_fraction']:>9.1f}% {r['workers']:>8} {r['device']:>7}"
        )
    if references:
        print("\nsamples/s, two interleaved runs each (same model and batch):")
        print(f"{'model':<14} {'--decoded-cache':>18} {'plain loop':>16} {'frozen tokens':>16}")
        for r in references:
            cells = [" / ".join(f"{v:.0f}" for v in r[k])
                     for k in ("decoded_cache", "plain", "plain_frozen_tokens")]
            print(f"{r['model']:<14} {cells[0]:>18} {cells[1]:>16} {cells[2]:>16}")


if __name__ == "__main__":
    main()
