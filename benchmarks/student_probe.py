"""Can a student's image tower learn the toy world's classes within the demo's budget?

The demo's proxy evaluation only means something if the student CLIP can learn shapes from
the samples it sees. This probe takes the contrastive objective out of the question: it
trains each model's image tower plus a linear head with cross-entropy on toy-world scenes
whose class is known (``curate.toyworld.scene``, the same generator and canvas sizes as the
HQ split, open_clip's train transform at the tower's input size), for ``--steps`` steps, and
prints per model the training accuracy over the last 100 steps at a few checkpoints, the
accuracy on ``--test`` held-out scenes, and samples/s. A tower that stays near chance here
cannot reach useful zero-shot accuracy as a CLIP student at the same budget.

Models are open_clip names (packaged ``fp-*`` configs or any open_clip config; ``--config-dir``
adds a folder of JSON configs), or ``timm:NAME`` for a timm tower (average pool, linear
projection to 128) at 32 px, e.g. ``timm:test_resnet``.

Usage::

    .venv/bin/python benchmarks/student_probe.py [--models fp-tiny-rn,fp-tiny-vit,fp-tiny-cnn]
        [--steps 600] [--batch-size 64] [--lr 2e-3] [--config-dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from curate.models.spec import PACKAGED_CONFIG_DIR
from curate.toyworld.noise import SizeRanges, clean_base
from curate.toyworld.scene import CLASSES, encode_jpeg, render

CLEAN_SIDES = SizeRanges().clean  # the HQ split's canvas sides
PROBE_SPLIT = 99  # a split id of the probe's own, apart from the world's splits


def scenes(seed: int, count: int) -> tuple[list[bytes], np.ndarray]:
    """``count`` labelled clean toy scenes as JPEG bytes, drawn as the HQ split draws them."""
    images, labels = [], []
    for index in range(count):
        scene, _ = clean_base(seed, PROBE_SPLIT, index, CLEAN_SIDES)
        images.append(encode_jpeg(render(scene)))
        labels.append(scene.label)
    return images, np.asarray(labels)


def batch(transform, images: list[bytes], picks: np.ndarray) -> torch.Tensor:
    return torch.stack([transform(Image.open(io.BytesIO(images[i])).convert("RGB")) for i in picks])


def register_timm_tower(name: str, folder: Path) -> str:
    """Register an open_clip config with timm tower ``name`` at 32 px; returns its name."""
    config = {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 32, "timm_model_name": name, "timm_pool": "avg",
                       "timm_proj": "linear"},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 2,
                     "layers": 1},
    }  # fmt: skip
    config_name = f"probe-timm-{name}"
    (folder / f"{config_name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return config_name


def probe(name: str, args: argparse.Namespace, train, test) -> dict:
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    tower = model.visual.train()
    size = tower.image_size if isinstance(tower.image_size, int) else tower.image_size[0]
    train_tf = open_clip.image_transform(size, is_train=True)
    eval_tf = open_clip.image_transform(size, is_train=False)
    with torch.no_grad():
        width = tower(torch.zeros(2, 3, size, size)).shape[-1]
    head = torch.nn.Linear(width, len(CLASSES))
    params = list(tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.1)
    rng = np.random.default_rng(1)
    hits, curve, model_seconds = [], {}, 0.0
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        picks = rng.integers(len(train[0]), size=args.batch_size)
        x, y = batch(train_tf, train[0], picks), torch.as_tensor(train[1][picks])
        t0 = time.perf_counter()
        logits = head(tower(x))
        loss = torch.nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model_seconds += time.perf_counter() - t0
        hits.append(float((logits.argmax(1) == y).float().mean()))
        if step % args.report_every == 0 or step == args.steps:
            curve[step] = round(float(np.mean(hits[-100:])), 3)
            print(f"{name} step {step}: train acc {curve[step]}", file=sys.stderr)
    wall = time.perf_counter() - start
    tower.eval()
    correct = 0
    with torch.inference_mode():
        for lo in range(0, len(test[0]), 256):
            picks = np.arange(lo, min(lo + 256, len(test[0])))
            pred = head(tower(batch(eval_tf, test[0], picks))).argmax(1).numpy()
            correct += int((pred == test[1][picks]).sum())
    return {
        "model": name,
        "image_size": size,
        "tower_params": sum(p.numel() for p in tower.parameters()),
        "train_acc_curve": curve,
        "test_acc": correct / len(test[0]),
        "chance": 1 / len(CLASSES),
        "samples_per_second": args.steps * args.batch_size / wall,
        "model_samples_per_second": args.steps * args.batch_size / model_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="fp-tiny-rn,fp-tiny-vit,fp-tiny-cnn")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train", type=int, default=10_000, help="generated training scenes")
    parser.add_argument("--test", type=int, default=1_100, help="generated held-out scenes")
    parser.add_argument("--report-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config-dir", default=None, help="extra open_clip JSON configs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    open_clip.add_model_config(PACKAGED_CONFIG_DIR)
    if args.config_dir:
        open_clip.add_model_config(args.config_dir)
    train, test = scenes(0, args.train), scenes(1, args.test)
    names = args.models.split(",")
    with tempfile.TemporaryDirectory() as folder:
        names = [
            register_timm_tower(n.removeprefix("timm:"), Path(folder)) if n.startswith("timm:")
            else n
            for n in names
        ]  # fmt: skip
    results = [probe(name, args, train, test) for name in names]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    header = f"{'model':<22} {'px':>3} {'params':>9} {'test acc':>8} {'samples/s':>9}"
    print(f"{header}  train acc by step")
    for r in results:
        curve = " ".join(f"{s}:{a:.2f}" for s, a in r["train_acc_curve"].items())
        print(
            f"{r['model']:<22} {r['image_size']:>3} {r['tower_params']:>9} "
            f"{r['test_acc']:>8.3f} {r['samples_per_second']:>9.0f}  {curve}"
        )
    print(f"chance: {1 / len(CLASSES):.3f}")


if __name__ == "__main__":
    main()
