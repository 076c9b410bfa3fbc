"""Training outputs beside the model: the loss curve (CSV and PNG) and ``train.json``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from curate.io.workspace import atomic_path, write_json_atomic

TRAIN_FILE = "train.json"
CURVE_CSV = "loss_curve.csv"
CURVE_PNG = "loss_curve.png"
CURVE_FIELDS = ("step", "samples_seen", "lr", "loss", "step_seconds", "data_wait_seconds")


def write_loss_curve(
    out: Path, history: list[dict[str, Any]], validations: list[dict[str, Any]]
) -> None:
    """``loss_curve.csv`` (one row per optimizer step) and ``loss_curve.png``."""
    with atomic_path(Path(out) / CURVE_CSV) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], lw=1, label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    recall = [v for v in validations if "image_to_text_r1" in v]
    if recall:
        right = ax.twinx()
        right.plot(
            [v["step"] for v in recall],
            [(v["image_to_text_r1"] + v["text_to_image_r1"]) / 2 for v in recall],
            "o-",
            color="tab:orange",
            label="held-out recall@1 (mean)",
        )
        right.set_ylabel("recall@1")
        right.set_ylim(0, 1)
        right.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title("train-dfn")
    fig.tight_layout()
    with atomic_path(Path(out) / CURVE_PNG) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_train_record(out: Path, record: dict[str, Any]) -> Path:
    """``train.json``, written last: its presence marks a finished run."""
    path = Path(out) / TRAIN_FILE
    write_json_atomic(path, record)
    return path
