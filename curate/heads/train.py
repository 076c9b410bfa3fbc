"""train-head: fit a linear or small MLP head on a run's saved embeddings from a labels table.

Labels join the run's pool rows by uid; a uid that occurs on several pool rows labels every one
of them, and the train / held-out split is drawn over uids (stratified by class), so copies of a
sample never sit on both sides. Rows without a usable embedding are left out and counted.
Inputs are standardised while training and the standardisation is folded into the first layer
(regression targets too, into the last), so the saved head maps embeddings straight to scores.
The held-out report is computed by the saved head on held-out rows only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch
from torch import nn

from curate.errors import UserError
from curate.heads.labels import TASKS, Labels, read_labels
from curate.heads.model import (
    INPUTS,
    Head,
    HeadInfo,
    LoadedHead,
    build_head,
    head_inputs,
    load_head,
    save_head,
)
from curate.io.embeddings import open_embeddings
from curate.io.pool_table import read_pool_part
from curate.io.workspace import SCORER_NAME, RunPaths, atomic_path, file_sha256

logger = logging.getLogger(__name__)

HEAD_TYPES = ("linear", "mlp")


@dataclass(frozen=True)
class TrainHeadConfig:
    """One train-head request."""

    run: Path
    labels: Path
    embeddings: str
    out: Path
    head_type: str = "linear"
    task: str = "auto"
    input: str = "image"
    hidden: tuple[int, ...] = (256,)
    holdout: float = 0.2
    seed: int = 0
    epochs: int = 100
    batch_size: int = 1024
    lr: float | None = None  # default: 1e-2 for linear heads, 1e-3 for MLPs
    weight_decay: float = 1e-4
    positive: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("run", "labels", "out"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.head_type not in HEAD_TYPES:
            raise UserError(f"--type must be one of {', '.join(HEAD_TYPES)}, got "
                            f"'{self.head_type}'")
        if self.task not in TASKS:
            raise UserError(f"--task must be one of {', '.join(TASKS)}, got '{self.task}'")
        if self.input not in INPUTS:
            raise UserError(f"--input must be one of {', '.join(INPUTS)}, got '{self.input}'")
        if not SCORER_NAME.match(self.embeddings):
            raise UserError(f"--embeddings '{self.embeddings}': an embeddings name")
        if self.head_type == "mlp" and (not self.hidden or min(self.hidden) < 1):
            raise UserError("--hidden: positive layer sizes, e.g. 256 or 512,64")
        if not 0.0 <= self.holdout < 1.0:
            raise UserError(f"--holdout must be in [0, 1), got {self.holdout}")
        if self.lr is None:
            object.__setattr__(self, "lr", 1e-2 if self.head_type == "linear" else 1e-3)
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise UserError("--epochs, --batch-size and --lr must be positive, --weight-decay "
                            "not negative")


@dataclass(frozen=True)
class LabelledRows:
    """The run's rows that carry a label and a usable embedding, as the head's input."""

    uids: np.ndarray  # str, one per row
    features: np.ndarray  # float32 [rows, input_dim]
    targets: np.ndarray  # float64
    matched_rows: int  # pool rows whose uid is labelled
    missing_embedding: int  # of those, rows without a usable embedding
    unmatched_labels: int  # labelled uids not in the run


def labelled_rows(run: Path, labels: Labels, embeddings: str, info: HeadInfo) -> LabelledRows:
    """Join ``labels`` to every pool row with that uid; their embeddings as head inputs."""
    image = open_embeddings(run, embeddings, "image")
    text = open_embeddings(run, embeddings, "text") if info.input == "image_text" else None
    uids, features, targets, matched, usable_total = [], [], [], 0, 0
    seen = np.zeros(len(labels.uids), dtype=bool)  # labels whose uid is in the run
    for number, (pool_part, image_part) in enumerate(zip(RunPaths(run).pool_parts(), image,
                                                         strict=True)):
        part_uids = read_pool_part(pool_part, ["uid"]).column("uid")
        index = pc.index_in(part_uids, value_set=labels.uids)
        rows = np.flatnonzero(index.is_valid().to_numpy(zero_copy_only=False))
        if not len(rows):
            continue
        matched += len(rows)
        label_index = index.to_numpy(zero_copy_only=False)[rows].astype(np.int64)
        seen[label_index] = True
        image_rows = np.asarray(image_part.load()[rows])
        text_rows = np.asarray(text.parts[number].load()[rows]) if text is not None else None
        inputs, usable = head_inputs(image_rows, text_rows, info)
        usable_total += int(usable.sum())
        uids.append(labels.uids.take(label_index[usable]).to_numpy(zero_copy_only=False))
        features.append(inputs[usable])
        targets.append(labels.targets[label_index[usable]])
    if matched == 0:
        raise UserError(f"{labels.path}: none of its {len(labels.uids)} uids is in run {run}")
    if usable_total == 0:
        raise UserError(f"{labels.path}: its {matched} matching rows have no usable "
                        f"'{embeddings}' embedding")
    return LabelledRows(np.concatenate(uids), np.concatenate(features),
                        np.concatenate(targets), matched, matched - usable_total,
                        int((~seen).sum()))


def split_uids(uids: np.ndarray, targets: np.ndarray | None, holdout: float, seed: int
               ) -> set[str]:
    """The held-out uids: a seeded share ``holdout`` of the distinct uids (of each class when
    ``targets`` are classes; at least one per class and one left to train when possible)."""
    distinct, first = np.unique(uids, return_index=True)
    strata = targets[first] if targets is not None else np.zeros(len(distinct))
    rng = np.random.default_rng(seed)
    held: list[str] = []
    for value in np.unique(strata):
        members = distinct[strata == value]
        count = int(round(holdout * len(members)))
        if holdout > 0 and len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        held.extend(members[rng.permutation(len(members))[:count]].tolist())
    return set(held)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None without both classes."""
    from scipy.stats import rankdata

    positives = labels > 0.5
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def evaluate(task: str, targets: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Held-out metrics: accuracy and ROC AUC (classification; scores are P(positive)) or
    Pearson, Spearman and MSE (regression)."""
    if len(targets) == 0:
        return {}
    if task == "classification":
        return {"accuracy": float(np.mean((scores >= 0.5) == (targets > 0.5))),
                "roc_auc": roc_auc(targets, scores),
                "positive_rate": float(np.mean(targets > 0.5))}
    from scipy.stats import pearsonr, spearmanr

    constant = np.ptp(targets) == 0 or np.ptp(scores) == 0 or len(targets) < 2
    return {"pearson": None if constant else float(pearsonr(targets, scores)[0]),
            "spearman": None if constant else float(spearmanr(targets, scores)[0]),
            "mse": float(np.mean((scores - targets) ** 2))}


def _fit(head: Head, x: np.ndarray, y: np.ndarray, task: str, config: TrainHeadConfig
         ) -> list[float]:
    """Minibatch AdamW on standardised inputs; the loss of each epoch."""
    generator = torch.Generator().manual_seed(config.seed)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    loss_fn: nn.Module = nn.BCEWithLogitsLoss() if task == "classification" else nn.MSELoss()
    optimiser = torch.optim.AdamW(head.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    losses = []
    head.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            loss = loss_fn(head(inputs[batch]), targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        losses.append(total / len(order))
    head.eval()
    return losses


@torch.no_grad()
def _fold(head: Head, mean: np.ndarray, scale: np.ndarray, y_mean: float, y_scale: float
          ) -> None:
    """Fold input standardisation ``(x - mean) / scale`` into the first Linear and the target
    scaling ``y * y_scale + y_mean`` into the last, so the head reads raw inputs."""
    linears = head.linears()
    first, last = linears[0], linears[-1]
    inv = torch.from_numpy((1.0 / scale).astype(np.float32))
    first.weight.mul_(inv)
    first.bias.sub_(first.weight @ torch.from_numpy(mean.astype(np.float32)))
    last.weight.mul_(y_scale)
    last.bias.mul_(y_scale).add_(y_mean)


@dataclass(frozen=True)
class TrainHeadResult:
    """A trained head: where it went, what it is and its held-out report."""

    out: Path
    info: HeadInfo
    sha256: str
    seconds: float
    report: dict[str, Any] = field(default_factory=dict)
    reused: bool = False  # an identical earlier run's head was kept

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "sha256": self.sha256, "seconds": round(self.seconds, 2),
                "reused": self.reused, "head": self.info.to_dict()}

    def text(self) -> str:
        r = self.info.report
        held = r.get("holdout", {})
        lines = [f"trained a {self.info.architecture} head ({self.info.label_kind}) on "
                 f"'{self.info.embeddings}' {self.info.input} embeddings -> {self.out}",
                 f"  rows: {r['train_rows']} train, {r['holdout_rows']} held out "
                 f"({r['train_uids']} / {r['holdout_uids']} uids); "
                 f"{r['missing_embedding']} labelled rows without an embedding, "
                 f"{r['unmatched_labels']} labels not in the run"]
        if self.reused:
            lines.append("  (reused: the head file was made with these settings already)")
        if self.info.positive is not None:
            lines.append(f"  positive class: '{self.info.positive}' (score = P(positive))")
        if held:
            lines.append("  held out: " + ", ".join(
                f"{k} {'n/a' if v is None else round(v, 4)}" for k, v in held.items()))
        else:
            lines.append("  held out: none (--holdout 0)")
        return "\n".join(lines)


def _settings(config: TrainHeadConfig) -> dict[str, Any]:
    """What makes a head: reruns with the same settings and labels reuse the file."""
    return {"labels_sha256": file_sha256(config.labels), "run": str(config.run.resolve()),
            "embeddings": config.embeddings, "type": config.head_type, "task": config.task,
            "input": config.input, "hidden": list(config.hidden), "holdout": config.holdout,
            "seed": config.seed, "epochs": config.epochs, "batch_size": config.batch_size,
            "lr": config.lr, "weight_decay": config.weight_decay, "positive": config.positive}


def _previous(path: Path) -> LoadedHead | None:
    try:
        return load_head(path)
    except UserError:
        return None


def train_head(config: TrainHeadConfig) -> TrainHeadResult:
    """Fit and save a head from ``config.labels``; its held-out report."""
    started = time.perf_counter()
    RunPaths(config.run).read_run()
    if config.out.is_dir():
        raise UserError(f"{config.out} is a folder; --out is a head file")
    dim = open_embeddings(config.run, config.embeddings, "image").dim
    labels = read_labels(config.labels, config.task, config.positive)
    settings = _settings(config)
    if config.out.exists() and not config.overwrite:
        previous = _previous(config.out)
        if previous is not None and previous.info.report.get("settings") == settings:
            return TrainHeadResult(config.out, previous.info, previous.sha256,
                                   time.perf_counter() - started, previous.info.report,
                                   reused=True)
        raise UserError(f"{config.out} exists (made with other settings or not a head of "
                        "train-head); pass --overwrite to replace it")
    input_dim = dim * (2 if config.input == "image_text" else 1)
    hidden = config.hidden if config.head_type == "mlp" else ()
    info = HeadInfo(config.head_type, input_dim, hidden, config.input, "l2",
                    "sigmoid" if labels.task == "classification" else "identity",
                    config.embeddings, labels.task, labels.positive)
    data = labelled_rows(config.run, labels, config.embeddings, info)
    classes = data.targets if labels.task == "classification" else None
    held_uids = split_uids(data.uids, classes, config.holdout, config.seed)
    held = np.isin(data.uids, np.array(sorted(held_uids), dtype=object)) if held_uids \
        else np.zeros(len(data.uids), dtype=bool)
    train_x, train_y = data.features[~held], data.targets[~held]
    if len(train_x) == 0:
        raise UserError(f"{config.labels}: no rows left to train on")
    if labels.task == "classification" and len(np.unique(train_y)) < 2:
        raise UserError(f"{config.labels}: the training rows hold one class only")
    mean, scale = train_x.mean(axis=0), train_x.std(axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    y_mean, y_scale = 0.0, 1.0
    if labels.task == "regression":
        y_mean, y_scale = float(train_y.mean()), float(train_y.std()) or 1.0
    torch.manual_seed(config.seed)
    head = build_head(info)
    losses = _fit(head, ((train_x - mean) / scale).astype(np.float32),
                  (train_y - y_mean) / y_scale, labels.task, config)
    _fold(head, mean, scale, y_mean, y_scale)
    loaded = LoadedHead(config.out, "", info, head)
    report = {
        "settings": settings,
        "labels": str(config.labels), "label_column": labels.column, "task": labels.task,
        "negative": labels.negative, "seed": config.seed, "epochs": config.epochs,
        "lr": config.lr, "weight_decay": config.weight_decay, "holdout_share": config.holdout,
        "matched_rows": data.matched_rows, "missing_embedding": data.missing_embedding,
        "unmatched_labels": data.unmatched_labels,
        "repeated_uid_rule": "a uid on several pool rows labels each row; the split is by uid",
        "train_rows": int((~held).sum()), "holdout_rows": int(held.sum()),
        "train_uids": len(set(data.uids[~held].tolist())), "holdout_uids": len(held_uids),
        "final_train_loss": losses[-1],
        "holdout": evaluate(labels.task, data.targets[held], loaded.predict(data.features[held])),
    }
    info = HeadInfo(**{**info.__dict__, "report": report})
    with atomic_path(config.out) as tmp:
        save_head(head, info, tmp)
    logger.info("head written to %s", config.out)
    return TrainHeadResult(config.out, info, file_sha256(config.out),
                           time.perf_counter() - started, report)
