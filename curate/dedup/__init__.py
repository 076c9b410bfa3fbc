"""Deduplication at three levels (exact bytes/pixels, perceptual hashes, SemDeDup embeddings),
one output shape: a derived table ``RUN/scores/<name>/`` of groups, representatives and why.

The image hashes behind the exact and perceptual levels are a sharded stage on the runner
(``RUN/features/image_hashes/``), computed once and shared by both levels.
"""

from curate.runner.commands import declare_sharded_stage

declare_sharded_stage("dedup", commands=("dedup", "run"))
