"""Dataset reinforcement (MobileCLIP): stored augmentations, teacher embeddings, captions."""

from curate.runner.commands import declare_sharded_stage

declare_sharded_stage("reinforce", commands=("reinforce", "run"))
