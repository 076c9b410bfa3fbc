"""Training CLIP-style filter networks (``filter-pool train-dfn``) and the reusable loop."""

from curate.train.evalset import EvalSet, load_eval_set
from curate.train.loop import TrainConfig, TrainResult, train_clip

__all__ = ["EvalSet", "TrainConfig", "TrainResult", "load_eval_set", "train_clip"]
