"""Scoring: a registered scorer kind (open_clip cosine by default) for every sample of a run."""

from curate.runner.commands import declare_sharded_stage

declare_sharded_stage("score", commands=("score", "demo", "run"))
