"""``train_clip``: a contrastive CLIP training run with open_clip, resumable, validated.

The pieces are separate so other stages reuse them: the data source (:mod:`curate.train.data`),
the model (:mod:`curate.train.model`), the loss (open_clip's ``ClipLoss`` unless a caller passes
another ``loss_fn``) and the validation (:mod:`curate.train.validation`). With ``reinforced``
set, pairs, batches and loss come from :mod:`curate.train.reinforced` (distillation).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import curate
from curate.errors import UserError
from curate.io.lock import beside, hold, writes
from curate.io.workspace import check_apart, check_replaceable
from curate.models.directory import CONFIG_NAME, write_model_files
from curate.train.checkpoint import (
    CHECKPOINT_DIR,
    identity_differences,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from curate.train.data import (
    EpochBatchSampler,
    PairDataset,
    PairIndex,
    collate_pairs,
    epoch_loader,
    holdout_positions,
    index_data,
)
from curate.train.decoded import DecodedBatches, cached_decode
from curate.train.evalset import EvalSet, load_eval_set
from curate.train.model import TrainableModel, build_model
from curate.train.reinforced import DistillConfig, ReinforcedSource, distill_step
from curate.train.report import TRAIN_FILE, write_loss_curve, write_train_record
from curate.train.schedule import cosine_lr, set_lr
from curate.train.validation import validate

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
MAX_HOLDOUT = 1000
LOGIT_SCALE_MAX = math.log(100)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
StepHook = Callable[[int, float], None]


def _positive(name: str, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or value <= 0):
        raise UserError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Exactly one of ``steps``, ``epochs``, ``samples`` sets its length
    (one epoch when none is given); ``batch_size * accum`` pairs make one optimizer step.

    ``reinforced``: train on these reinforced shards (a ``filter-pool reinforce`` output of
    DATA's export) with the distillation loss ``distill`` instead of on DATA's pairs; DATA and
    ``subset`` then only name where the shards came from.

    ``decoded_cache``: decode every pair once into memory at the model's input size and augment
    with random crops on tensors (:mod:`curate.train.decoded`) instead of decoding and
    RandomResizedCrop per draw: fp-tiny-cnn on 10k toy pairs trains ~3x faster on 2 cores."""

    data: Path
    out: Path
    subset: str | None = None
    model: str | None = None
    init: str | None = None
    steps: int | None = None
    epochs: float | None = None
    samples: int | None = None
    batch_size: int = 64
    accum: int = 1
    lr: float | None = None
    warmup: int | None = None
    weight_decay: float = 0.2
    holdout: int | None = None
    eval_set: Path | None = None
    val_every: int | None = None
    checkpoint_every: int | None = None
    workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    overwrite: bool = False
    progress: bool = True
    reinforced: Path | None = None
    distill: DistillConfig | None = None
    decoded_cache: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        if self.reinforced is not None:
            object.__setattr__(self, "reinforced", Path(self.reinforced))
            object.__setattr__(self, "distill", self.distill or DistillConfig())
            if self.accum != 1:
                raise UserError("training on --reinforced data takes --accum 1")
            if self.decoded_cache:
                raise UserError("--decoded-cache does not apply to --reinforced data")
        elif self.distill is not None:
            raise UserError("distillation options need --reinforced DIR")
        if self.eval_set is not None:
            object.__setattr__(self, "eval_set", Path(self.eval_set))
        lengths = [x for x in (self.steps, self.epochs, self.samples) if x is not None]
        if len(lengths) > 1:
            raise UserError("give only one of --steps, --epochs and --samples")
        for name in (
            "steps",
            "epochs",
            "samples",
            "batch_size",
            "accum",
            "lr",
            "val_every",
            "checkpoint_every",
        ):
            _positive(f"--{name.replace('_', '-')}", getattr(self, name))
        for name in ("warmup", "holdout", "workers"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"--{name} must be >= 0, got {value}")
        if self.weight_decay < 0:
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            raise UserError(f"--device must be one of {', '.join(DEVICES)}")

    def identity(self, resolved: dict[str, Any]) -> dict[str, Any]:
        """What a resumed run must share with the checkpoint: data, model and optimisation."""
        identity = {
            "data": str(self.data.resolve()),
            "subset": self.subset,
            "model": self.model,
            "init": self.init,
            "batch_size": self.batch_size,
            "accum": self.accum,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            **{k: resolved[k] for k in ("total_steps", "lr", "warmup", "holdout", "precision")},
        }
        if self.reinforced is not None and self.distill is not None:
            identity["reinforced"] = {
                "path": str(self.reinforced.resolve()),
                **self.distill.to_dict(),
            }
        if self.decoded_cache:
            identity["decoded_cache"] = True
        return identity


@dataclass
class TrainResult:
    """What a run did and measured; ``to_dict`` is ``train.json``."""

    out: Path
    record: dict[str, Any] = field(default_factory=dict)
    model: torch.nn.Module | None = None  # the trained model, in eval mode
    reused: bool = False  # a finished run of the same configuration: nothing trained, no model

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record.get("final_metrics", {})

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), **self.record}

    def text(self) -> str:
        record, metrics = self.record, self.metrics
        lines = [f"{'done: already trained' if self.reused else 'trained'} "
                 f"{record['model']['architecture']} for {record['steps']} steps "
                 f"({record['samples_seen']} samples seen) -> {self.out}"]
        if metrics.get("loss_first") is not None:
            lines.append(f"  loss {metrics['loss_first']:.4f} -> {metrics['loss_last']:.4f}")
        if "image_to_text_r1" in metrics:
            lines.append(f"  held-out recall@1 ({metrics['heldout_pairs']} pairs, chance "
                         f"{metrics['recall_chance']:.4f}): image->text "
                         f"{metrics['image_to_text_r1']:.4f}, text->image "
                         f"{metrics['text_to_image_r1']:.4f}")
        if "zero_shot_top1" in metrics:
            lines.append(f"  zero-shot top-1 on {metrics['eval_set']}: "
                         f"{metrics['zero_shot_top1']:.4f} (chance "
                         f"{metrics['zero_shot_chance']:.4f})")
        throughput = record["throughput"]
        if throughput["steps_per_second"]:
            lines.append(f"  {throughput['steps_per_second']:.2f} steps/s, "
                         f"{throughput['samples_per_second']:.1f} samples/s, waiting on data "
                         f"{100 * throughput['data_wait_fraction']:.1f}% of the time")
        skipped = record["data"]["skipped"]
        if skipped:
            lines.append("  skipped samples: " + ", ".join(f"{k} {v}" for k, v in skipped.items()))
        lines.append(f"  score with: filter-pool score RUN --model {self.out}")
        return "\n".join(lines)


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is visible")
    return torch.device(name)


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA only; the CPU stays fp32."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _check_out(config: TrainConfig) -> None:
    """Refuse to clobber, before anything is read or written: an existing DIR is resumed,
    replaced (``--overwrite``, only if it is a train-dfn output) or refused."""
    out = config.out
    data_is_run = (Path(config.data) / "run.json").is_file()  # evaluate trains inside its run
    check_apart(out, [config.data, *([config.eval_set] if config.eval_set else []),
                      *([config.reinforced] if config.reinforced else [])],
                inside_ok=[config.data] if data_is_run else [])
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    ours = any((out / name).exists() for name in (TRAIN_FILE, CHECKPOINT_DIR, CONFIG_NAME))
    if ours or not any(out.iterdir()):
        return
    if config.overwrite:
        check_replaceable(out, (TRAIN_FILE, CHECKPOINT_DIR, CONFIG_NAME), "train-dfn")
    raise UserError(f"--out {out} exists and is not empty; pass --overwrite to replace it")


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW as open_clip's training sets it up: no decay on gains, biases and logit scale.

    The fused kernel (CPU and CUDA) is the same update in one pass per tensor: on a tiny CLIP
    it cuts the step over the 49,408-row token embedding from ~50 ms to ~5 ms on 2 cores.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exclude = (
            param.ndim < 2
            or "bn" in name
            or "ln" in name
            or "bias" in name
            or "logit_scale" in name
        )
        (no_decay if exclude else decay).append(param)
    groups = [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)


def _resolve(config: TrainConfig, n_pairs: int) -> dict[str, Any]:
    """Turn defaults into numbers: held-out size, steps, lr, warmup, precision."""
    holdout = config.holdout
    if holdout is None:
        holdout = min(MAX_HOLDOUT, n_pairs // 10)
    if holdout >= n_pairs:
        raise UserError(f"--holdout {holdout} leaves no training pairs (data has {n_pairs})")
    n_train = n_pairs - holdout
    per_step = config.batch_size * config.accum
    if per_step > n_train:
        raise UserError(
            f"batch size {config.batch_size} x accum {config.accum} = {per_step} is larger than "
            f"the {n_train} training pairs in {config.data} ({holdout} held out)"
        )
    if config.steps is not None:
        total = config.steps
    elif config.samples is not None:
        total = max(1, config.samples // per_step)
    else:
        total = max(1, int((config.epochs or 1.0) * (n_train // per_step)))
    warmup = config.warmup if config.warmup is not None else total // 10
    lr = config.lr if config.lr is not None else (1e-5 if config.init else 5e-4)
    return {
        "holdout": holdout,
        "n_train": n_train,
        "per_step": per_step,
        "total_steps": total,
        "warmup": warmup,
        "lr": lr,
        "precision": config.precision,
    }


@dataclass
class _State:
    step: int = 0
    samples_seen: int = 0
    undecodable: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    validations: list[dict[str, Any]] = field(default_factory=list)
    wait_seconds: float = 0.0
    loop_seconds: float = 0.0


def contrastive_step(
    model: torch.nn.Module,
    loss_fn: LossFn,
    micro: list[tuple],
    device: torch.device,
    dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None,
) -> float:
    """Forward and backward for one optimizer step over ``micro`` batches.

    With several micro-batches the gradient is the full-batch contrastive gradient (open_clip's
    ``accum_freq``): features of every micro-batch are first computed without gradients, then
    each micro-batch is re-encoded with gradients against the cached others. The logit scale
    takes its gradient from the first pass only, so it is not counted once per micro-batch.
    """
    autocast = (
        torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )

    def encode(images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            model.encode_image(images, normalize=True),
            model.encode_text(tokens, normalize=True),
        )

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    batches = [(i.to(device, non_blocking=True), t.to(device, non_blocking=True)) for i, t in micro]
    if len(batches) == 1:
        with autocast:
            image, text = encode(*batches[0])
            loss = loss_fn(image, text, model.logit_scale.exp())
        backward(loss)
        return float(loss.detach())
    with torch.no_grad(), autocast:
        cached = [encode(i, t) for i, t in batches]
    value = 0.0
    for j, (images, tokens) in enumerate(batches):
        with autocast:
            image_j, text_j = encode(images, tokens)
            images_all = torch.cat(
                [c[0] for c in cached[:j]] + [image_j] + [c[0] for c in cached[j + 1 :]]
            )
            texts_all = torch.cat(
                [c[1] for c in cached[:j]] + [text_j] + [c[1] for c in cached[j + 1 :]]
            )
            scale = model.logit_scale.exp()
            loss = loss_fn(images_all, texts_all, scale if j == 0 else scale.detach())
        backward(loss)
        value = float(loss.detach())
    return value


def _loader(
    index: PairIndex,
    trainable: TrainableModel,
    config: TrainConfig,
    workers: int,
    start_micro: int,
    total_micro: int,
) -> DataLoader:
    dataset = PairDataset(
        index, trainable.train_transform, trainable.loaded.tokenizer, seed=config.seed
    )
    sampler = EpochBatchSampler(
        len(index), config.batch_size, config.seed, start_micro, total_micro
    )
    return epoch_loader(dataset, sampler, workers, collate_pairs)


def _decoded_loader(
    index: PairIndex,
    train_positions: np.ndarray,
    trainable: TrainableModel,
    config: TrainConfig,
    start_micro: int,
    total_micro: int,
) -> DecodedBatches:
    """Batches from the in-memory decoded cache of all of ``index`` (shared across seeds)."""
    preprocess = trainable.loaded.model.visual.preprocess_cfg
    size = preprocess["size"]
    size = size if isinstance(size, int) else max(size)
    pairs = cached_decode(index, size, trainable.loaded.tokenizer, config.progress)
    sampler = EpochBatchSampler(
        len(train_positions), config.batch_size, config.seed, start_micro, total_micro
    )
    return DecodedBatches(
        pairs.take(train_positions),
        size,
        tuple(preprocess["mean"]),
        tuple(preprocess["std"]),
        sampler,
        config.seed,
    )


def _checkpoint_state(
    state: _State,
    trainable: TrainableModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    identity: dict[str, Any],
) -> dict:
    return {
        "step": state.step,
        "samples_seen": state.samples_seen,
        "undecodable": state.undecodable,
        "model": trainable.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "history": state.history,
        "validations": state.validations,
        "wait_seconds": state.wait_seconds,
        "loop_seconds": state.loop_seconds,
        "identity": identity,
    }


def _resume(config: TrainConfig, identity: dict[str, Any], total: int) -> dict[str, Any] | None:
    checkpoint = load_checkpoint(config.out)
    if checkpoint is None:
        if (config.out / TRAIN_FILE).exists():
            raise UserError(
                f"--out {config.out} holds a finished run without a checkpoint; "
                "pass --overwrite to train again"
            )
        return None
    differences = identity_differences(checkpoint["identity"], identity)
    if differences:
        raise UserError(
            f"--out {config.out} holds a checkpoint of another configuration ("
            + "; ".join(differences)
            + "); pass --overwrite to start over"
        )
    return checkpoint


def _finished(config: TrainConfig, checkpoint: dict[str, Any] | None,
              total: int) -> TrainResult | None:
    """The finished run of this configuration in ``--out`` (its train.json), else None."""
    if checkpoint is None or checkpoint["step"] < total:
        return None
    record_file = config.out / TRAIN_FILE
    if not record_file.is_file():
        return None
    logger.info("%s holds a finished run of this configuration (%d steps): reusing it",
                config.out, checkpoint["step"])
    return TrainResult(out=config.out, record=json.loads(record_file.read_text()), reused=True)


def _run_validation(
    trainable: TrainableModel,
    holdout: PairIndex,
    eval_set: EvalSet | None,
    config: TrainConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    state: _State,
) -> dict[str, Any]:
    metrics = validate(
        trainable.model,
        trainable.loaded.preprocess,
        trainable.loaded.tokenizer,
        device,
        holdout,
        eval_set,
        config.batch_size,
        0,
        dtype,
    )
    metrics = {"step": state.step, "samples_seen": state.samples_seen, **metrics}
    state.validations.append(metrics)
    logger.info(
        "validation at step %d: %s",
        state.step,
        ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)),
    )
    return metrics


@writes(lambda config: hold(beside(config.out), f"train-dfn output {config.out}"))
def train_clip(
    config: TrainConfig, loss_fn: LossFn | None = None, on_step: StepHook | None = None
) -> TrainResult:
    """Train (or fine-tune) a CLIP model on DATA and write DIR (see ``train-dfn``).

    ``loss_fn(image_features, text_features, logit_scale)`` replaces open_clip's ``ClipLoss``;
    ``on_step(step, loss)`` is called after every optimizer step (an exception it raises stops
    the run as an interruption would: the last checkpoint stays).

    A finished run of the same configuration in DIR is not trained again: its record comes
    back (``reused``, no model); another configuration there is refused, naming what differs.
    """
    started = time.time()
    _check_out(config)
    eval_set = load_eval_set(config.eval_set) if config.eval_set is not None else None
    source = ReinforcedSource(config.reinforced) if config.reinforced is not None else None
    distill = config.distill or DistillConfig()
    if source is not None:
        index = source.index(progress=config.progress)
    else:
        index = index_data(config.data, config.subset, progress=config.progress)
    if index.skipped:
        logger.warning(
            "skipped %d samples of %s: %s",
            sum(index.skipped.values()),
            config.data,
            ", ".join(f"{k} {v}" for k, v in sorted(index.skipped.items())),
        )
    resolved = _resolve(config, len(index))
    identity = config.identity(resolved)
    checkpoint = None if config.overwrite else _resume(config, identity, resolved["total_steps"])
    finished = _finished(config, checkpoint, resolved["total_steps"])
    if finished is not None:
        return finished
    device = _device(config.device)
    dtype = _autocast_dtype(config.precision, device)
    torch.manual_seed(config.seed)
    trainable = build_model(config.model, config.init, device)
    train_positions, held_positions = holdout_positions(
        len(index), resolved["holdout"], config.seed
    )
    train_index, holdout = index.take(train_positions), index.take(held_positions)
    optimizer = _optimizer(trainable.model, resolved["lr"], config.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    if source is not None:
        loss_fn = loss_fn or source.loss(distill).to(device)
    loss_fn = loss_fn or open_clip.ClipLoss()

    state = _State()
    if checkpoint is not None:
        trainable.model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler is not None and checkpoint["scaler"] is not None:
            scaler.load_state_dict(checkpoint["scaler"])
        restore_rng(checkpoint["rng"])
        for name in (
            "step",
            "samples_seen",
            "undecodable",
            "history",
            "validations",
            "wait_seconds",
            "loop_seconds",
        ):
            setattr(state, name, checkpoint[name])
        logger.info("resuming %s at step %d of %d", config.out, state.step, resolved["total_steps"])
    resumed_from = last_saved = state.step
    if config.overwrite and config.out.exists():
        shutil.rmtree(config.out)  # checked by _check_out: a train-dfn output
    config.out.mkdir(parents=True, exist_ok=True)

    total = resolved["total_steps"]
    workers = config.workers if config.workers is not None else min(2, os.cpu_count() or 1)
    checkpoint_every = config.checkpoint_every or min(1000, max(50, total // 10))
    val_every = config.val_every or max(1, total // 5)
    start_micro, total_micro = state.step * config.accum, total * config.accum
    if source is not None:
        step_fn = distill_step
        loader = source.loader(
            train_index, trainable, distill, config.batch_size, config.seed, workers,
            start_micro, total_micro,
        )  # fmt: skip
    elif config.decoded_cache:
        step_fn = contrastive_step
        loader = _decoded_loader(
            index, train_positions, trainable, config, start_micro, total_micro
        )
    else:
        step_fn = contrastive_step
        loader = _loader(train_index, trainable, config, workers, start_micro, total_micro)
    batches = iter(loader)
    bar = tqdm(
        total=total, initial=state.step, unit="step", desc="train", disable=not config.progress
    )
    model = trainable.model
    session_start, session_wait, session_loop, session_steps = time.perf_counter(), 0.0, 0.0, 0
    try:
        while state.step < total:
            step_start = time.perf_counter()
            micro, wait = [], 0.0
            for _ in range(config.accum):
                t0 = time.perf_counter()
                images, tokens, bad = next(batches)
                wait += time.perf_counter() - t0
                state.undecodable += bad
                if len(images):
                    micro.append((images, tokens))
            lr = cosine_lr(state.step, resolved["lr"], resolved["warmup"], total)
            set_lr(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
            loss = step_fn(model, loss_fn, micro, device, dtype, scaler) if micro else math.nan
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
            state.step += 1
            state.samples_seen += sum(len(m[0]) for m in micro)
            step_seconds = time.perf_counter() - step_start
            state.wait_seconds += wait
            state.loop_seconds += step_seconds
            session_wait += wait
            session_loop += step_seconds
            session_steps += 1
            state.history.append(
                {
                    "step": state.step,
                    "samples_seen": state.samples_seen,
                    "lr": lr,
                    "loss": loss,
                    "step_seconds": step_seconds,
                    "data_wait_seconds": wait,
                }
            )
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
            bar.update(1)
            if state.step % val_every == 0 and state.step < total:
                _run_validation(trainable, holdout, eval_set, config, device, dtype, state)
            if state.step % checkpoint_every == 0 or state.step == total:
                save_checkpoint(
                    config.out, _checkpoint_state(state, trainable, optimizer, scaler, identity)
                )
                last_saved = state.step
            if on_step is not None:
                on_step(state.step, loss)
    except KeyboardInterrupt:
        logger.warning(
            "interrupted at step %d; the same command resumes from step %d",
            state.step,
            last_saved,
        )
        raise
    finally:
        bar.close()
        del batches
    session_seconds = time.perf_counter() - session_start
    final = _run_validation(trainable, holdout, eval_set, config, device, dtype, state)
    write_model_files(model, trainable.model_cfg, config.out)
    record = _record(
        config,
        resolved,
        trainable,
        index,
        train_index,
        state,
        final,
        source.describe(distill) if source is not None else None,
        {
            "resumed_from_step": resumed_from,
            "session_steps": session_steps,
            "session_seconds": session_seconds,
            "session_data_wait_seconds": session_wait,
            "session_step_seconds": session_loop,
            "wall_seconds": time.time() - started,
            "workers": workers,
            "device": str(device),
            "autocast": str(dtype) if dtype is not None else "fp32",
        },
    )
    write_loss_curve(config.out, state.history, state.validations)
    write_train_record(config.out, record)
    logger.info(
        "trained %s: %d steps, %d samples seen, data wait %.1f%%",
        config.out,
        state.step,
        state.samples_seen,
        100 * record["throughput"]["data_wait_fraction"],
    )
    return TrainResult(out=config.out, record=record, model=model.eval())


def _record(
    config: TrainConfig,
    resolved: dict[str, Any],
    trainable: TrainableModel,
    index: PairIndex,
    train_index: PairIndex,
    state: _State,
    final: dict[str, Any],
    reinforced: dict[str, Any] | None,
    run: dict[str, Any],
) -> dict[str, Any]:
    losses = [r["loss"] for r in state.history if not math.isnan(r["loss"])]
    window = max(1, min(10, len(losses) // 4))
    session_steps = run["session_steps"]
    session_seconds = run["session_step_seconds"]  # optimizer steps only, not validation
    hyper = {
        k: v
        for k, v in asdict(config).items()
        if k not in ("data", "out", "subset", "eval_set", "overwrite", "progress")
        and k not in ("reinforced", "distill")  # recorded below, only when set
    }
    if reinforced is not None:
        hyper["reinforced"] = reinforced
    hyper.update({k: resolved[k] for k in ("lr", "warmup", "holdout", "total_steps")})
    hyper["effective_batch_size"] = resolved["per_step"]
    hyper["optimizer"] = {"name": "AdamW", "betas": [0.9, 0.98], "eps": 1e-6, "fused": True}
    hyper["schedule"] = "linear warmup, cosine decay to 0"
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "filter_pool_version": curate.__version__,
        "open_clip_version": open_clip.__version__,
        "torch_version": torch.__version__,
        "data": {
            **index.source,
            "subset": config.subset,
            "pairs": len(index),
            "train_pairs": len(train_index),
            "heldout_pairs": resolved["holdout"],
            "skipped": dict(sorted(index.skipped.items())),
            "undecodable_in_training": state.undecodable,
        },
        "model": {
            "architecture": trainable.architecture,
            "init": trainable.init,
            "quick_gelu": trainable.loaded.quick_gelu,
            "parameters": sum(p.numel() for p in trainable.model.parameters()),
            "eval_set": str(config.eval_set) if config.eval_set else None,
        },
        "steps": state.step,
        "samples_seen": state.samples_seen,
        "epochs_seen": state.samples_seen / max(1, len(train_index)),
        "hyperparameters": hyper,
        "final_metrics": {
            "loss_first": (sum(losses[:window]) / window) if losses else None,
            "loss_last": (sum(losses[-window:]) / window) if losses else None,
            "loss_window_steps": window,
            **{k: v for k, v in final.items() if k not in ("step", "samples_seen")},
        },
        "validations": state.validations,
        "throughput": {
            "steps_per_second": session_steps / session_seconds if session_seconds else None,
            "samples_per_second": (
                session_steps * resolved["per_step"] / session_seconds if session_seconds else None
            ),
            "data_wait_fraction": (
                run["session_data_wait_seconds"] / session_seconds if session_seconds else 0.0
            ),
            "data_wait_fraction_all_sessions": (
                state.wait_seconds / state.loop_seconds if state.loop_seconds else 0.0
            ),
        },
        "run": run,
    }
